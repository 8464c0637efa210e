"""Deferred writes: run in order after the steps, at most a few held, failures fail the run."""

from __future__ import annotations

import pytest

from alo.asset import DeferredWork


def test_queued_work_runs_in_order_and_a_full_queue_runs_its_oldest():
    done: list[int] = []
    work = DeferredWork(limit=2)
    for i in range(5):
        work.add(done.append, i)
    assert done == [0, 1, 2] and len(work) == 2  # never more than the limit held
    work.run()
    assert done == [0, 1, 2, 3, 4] and len(work) == 0


def test_a_failure_is_raised_and_what_follows_it_stays_queued():
    done: list[str] = []
    work = DeferredWork()

    def broken() -> None:
        raise OSError("disk full")

    work.add(done.append, "a")
    work.add(broken)
    work.add(done.append, "c")
    with pytest.raises(OSError, match="disk full"):
        work.run()
    assert done == ["a"] and len(work) == 1
