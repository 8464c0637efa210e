"""Micro-batching: a lone request is scored at once, announced ones wait for each other (up to the window)."""

from __future__ import annotations

import threading
import time

from PIL import Image

from apps.http.batcher import Batcher


class CountingDetector:
    """Scores nothing; records the size of every batch it is given."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict(self, images: list, heatmaps: bool = False) -> list[int]:
        self.batches.append(len(images))
        return list(range(len(images)))


def test_a_lone_request_does_not_wait_for_the_window():
    detector = CountingDetector()
    batcher = Batcher(lambda: detector, window=5.0)
    try:
        started = time.monotonic()
        assert batcher.submit([Image.new("RGB", (4, 4))]).result(timeout=10) == [0]
        assert time.monotonic() - started < 1.0  # nobody announced: scored at once, not after 5 s
    finally:
        batcher.close()


def test_announced_requests_are_scored_in_one_batch():
    detector = CountingDetector()
    batcher = Batcher(lambda: detector, batch_size=8, window=5.0)
    try:
        for _ in range(3):
            batcher.announce()
        futures = [batcher.submit([Image.new("RGB", (4, 4))], announced=True)]
        time.sleep(0.2)  # the first waits: two announced requests are still on their way
        assert not futures[0].done()
        futures += [batcher.submit([Image.new("RGB", (4, 4))] * 2, announced=True)]
        batcher.withdraw()  # the third failed before scoring: the batch stops waiting for it
        assert [f.result(timeout=10) for f in futures] == [[0], [1, 2]]
        assert detector.batches == [3]
    finally:
        batcher.close()


def test_the_window_bounds_the_wait_for_an_announced_request():
    detector = CountingDetector()
    batcher = Batcher(lambda: detector, window=0.3)
    try:
        batcher.announce()  # never submits
        done = threading.Event()
        future = batcher.submit([Image.new("RGB", (4, 4))])
        future.add_done_callback(lambda _: done.set())
        assert done.wait(timeout=10) and future.result() == [0]
    finally:
        batcher.close()


def test_the_detector_is_loaded_and_used_in_the_scoring_thread():
    detector, callers = CountingDetector(), []

    def factory() -> CountingDetector:
        callers.append(threading.current_thread().name)
        return detector

    batcher = Batcher(factory)
    try:
        assert batcher.resolve().result(timeout=10) is detector
        batcher.submit([Image.new("RGB", (4, 4))]).result(timeout=10)
        assert callers == ["vad-batcher", "vad-batcher"]  # a model prepared elsewhere scores slower
    finally:
        batcher.close()
