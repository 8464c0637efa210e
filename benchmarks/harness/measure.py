"""Measuring: whole processes timed from the parent, repeats and their median, resident sets, percentiles."""

from __future__ import annotations

import json
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness.paths import ROOT


def main_py(*args: str, python: Path | str = sys.executable, checkout: Path = ROOT) -> list[str]:
    """The command line of ``main.py`` with some arguments.

    Args:
        *args: ``main.py``'s arguments (``--mode``, ``--config``, ...).
        python: The interpreter (default: this one).
        checkout: The checkout whose ``main.py`` runs (default: this repository).

    Returns:
        The argument list.
    """
    return [str(python), str(checkout / "main.py"), *args]


def run_timed(command: list[str], cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a command as its own process, its output captured as text.

    Args:
        command: The argument list.
        cwd: Its working folder.

    Returns:
        The finished process and its wall seconds, start to exit.
    """
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    return done, time.perf_counter() - started


def error_tail(done: subprocess.CompletedProcess[str], lines: int = 5) -> str:
    """The last lines a failed process wrote (its stderr, else its stdout), or its exit code when it wrote none.

    Args:
        done: The finished process.
        lines: How many lines at most.

    Returns:
        The text.
    """
    return "\n".join((done.stderr or done.stdout).strip().splitlines()[-lines:]) or f"exit {done.returncode}"


def timed(command: list[str], cwd: Path = ROOT, lines: int = 3) -> dict:
    """A command as its own process, timed from start to exit.

    Args:
        command: The argument list.
        cwd: Its working folder.
        lines: How many lines of a failure's output the row keeps.

    Returns:
        ``{"seconds": ...}``, with ``error`` (the output's last lines) when it failed.
    """
    done, seconds = run_timed(command, cwd)
    if done.returncode != 0:
        return {"error": error_tail(done, lines), "seconds": seconds}
    return {"seconds": seconds}


def repeated(command: list[str], repeats: int, cwd: Path = ROOT) -> dict:
    """:func:`timed` several times: the median seconds, and every run's.

    Args:
        command: The argument list.
        repeats: How many runs.
        cwd: Its working folder.

    Returns:
        ``{"seconds": median, "runs": [seconds, ...]}``, or the first failed run's row.
    """
    runs = [timed(command, cwd) for _ in range(repeats)]
    failed = [run for run in runs if "error" in run]
    if failed:
        return failed[0]
    seconds = sorted(run["seconds"] for run in runs)
    return {"seconds": seconds[len(seconds) // 2], "runs": [round(run["seconds"], 2) for run in runs]}


def run_seconds(record_path: Path) -> float:
    """Wall time of a run from its experimental_history.json.

    Args:
        record_path: The run's ``experimental_history.json``.

    Returns:
        End minus start, in seconds.
    """
    from datetime import datetime

    record = json.loads(record_path.read_text(encoding="utf-8"))
    start, end = (datetime.fromisoformat(record[key]) for key in ("start_time", "end_time"))
    return (end - start).total_seconds()


def run_times(project: Path) -> dict[str, float]:
    """The wall times of a project's last train and inference runs, from their history records.

    Args:
        project: The project folder (``train_artifacts/``, ``inference_artifacts/``).

    Returns:
        ``train_s``, ``inference_s``.
    """
    return {
        f"{pipeline}_s": run_seconds(project / f"{pipeline}_artifacts/log/experimental_history.json")
        for pipeline in ("train", "inference")
    }


def median_call_ms(function: Callable[[], object], repeats: int = 30) -> float:
    """Median milliseconds of a call, after one unmeasured warm-up call.

    Args:
        function: The call.
        repeats: Measured calls.

    Returns:
        The median.
    """
    function()
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        values.append(time.perf_counter() - start)
    return statistics.median(values) * 1000


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB.

    Returns:
        The peak.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb(pid: int) -> float:
    """Another process's resident set now, in MB.

    Args:
        pid: Its process id.

    Returns:
        Its ``VmRSS``.
    """
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+)", text)
    if found is None:  # a process that has exited (a zombie) has no resident set line
        msg = f"process {pid} has no VmRSS in /proc/{pid}/status"
        raise RuntimeError(msg)
    return int(found.group(1)) / 1024


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` of the values lie (nearest rank).

    Args:
        values: The values.
        share: From 0 to 1.

    Returns:
        The value.
    """
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> dict:
    """p50, p95 and mean of latencies in seconds, as milliseconds.

    Args:
        values: The latencies.

    Returns:
        ``p50_ms``, ``p95_ms``, ``mean_ms``, ``n``.
    """
    return {
        "p50_ms": percentile(values, 0.5) * 1000,
        "p95_ms": percentile(values, 0.95) * 1000,
        "mean_ms": statistics.fmean(values) * 1000,
        "n": len(values),
    }
