"""A benchmark's worker in a fresh process: ``python -m <benchmark> --worker KIND ARG... --out ROW.json``.

Every measurement that must own its process (its imports, its peak resident set, its threads) runs this way:
the parent calls :func:`spawn_worker`; the benchmark's ``main`` takes the hidden options of
:func:`add_worker_options` and, when ``--worker`` is given, runs the worker and hands its row back with
:func:`answer`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.harness.measure import error_tail, run_timed


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """The hidden ``--worker KIND ARG...`` and ``--out FILE`` options of a benchmark with workers.

    Args:
        parser: The benchmark's parser.
    """
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)


def answer(out: Path, row: dict) -> None:
    """Hand a worker's row back to the parent (the worker's side of :func:`spawn_worker`).

    Args:
        out: The ``--out`` file.
        row: The row (JSON-serialisable).
    """
    out.write_text(json.dumps(row))


def spawn_worker(module: str, *args: str, out: Path, wall_key: str | None = None, lines: int = 5) -> dict:
    """Run one worker of a benchmark module in a fresh process and read its row.

    Args:
        module: The benchmark (``benchmarks.speed``), run with ``python -m``.
        *args: The worker's kind and arguments.
        out: The file the worker writes its row to (removed first).
        wall_key: Also record the process's wall seconds (start to exit) under this key; None: not.
        lines: How many lines of a failed worker's output the row keeps.

    Returns:
        The worker's row, or ``{"error": its output's last lines}`` when it failed.
    """
    out.unlink(missing_ok=True)
    done, seconds = run_timed([sys.executable, "-m", module, "--worker", *args, "--out", str(out)])
    row = json.loads(out.read_text()) if done.returncode == 0 and out.is_file() else {"error": error_tail(done, lines)}
    if wall_key is not None:
        row[wall_key] = seconds
    return row
