"""The jobs folder: pending job folders under ``.pending/``, the loggers' error log, and waiting for the jobs."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from alo.tracking.settings import TrackingSettings

logger = logging.getLogger("alo.tracking")

PENDING = ".pending"
ERRORS = "tracking-errors.log"
JOB_FILE = "job.json"
MAX_ATTEMPTS = 3  # a job that failed this often is dropped (its errors are in the error log)
ATTEMPTS_FILE = "attempts"
STALE_S = 3600.0  # a job folder without job.json this old was left by a process that died writing it


def check_store(settings: TrackingSettings) -> None:
    """Check, without MLflow, that the jobs folder (the local store's folder) can be created and written.

    Args:
        settings: The tracking settings.

    Raises:
        OSError: The folder cannot be created or written.
    """
    folder = Path(settings.jobs)
    (folder / PENDING).mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        msg = f"{folder} is not writable"
        raise PermissionError(msg)


def complete_jobs(pending: Path) -> list[Path]:
    """The complete job folders (``job.json`` written) in a pending folder, sorted.

    Args:
        pending: The ``.pending`` folder.

    Returns:
        The job folders.
    """
    return sorted(p.parent for p in pending.glob(f"*/{JOB_FILE}"))


def sweep(pending: Path) -> None:
    """Remove what no logger will log: job folders a dying process left without ``job.json``, old job files.

    Args:
        pending: The ``.pending`` folder.
    """
    import time

    for path in pending.iterdir() if pending.is_dir() else []:
        try:
            if path.is_dir() and not (path / JOB_FILE).exists() and time.time() - path.stat().st_mtime > STALE_S:
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file() and path.suffix == ".json":  # this module's earlier job format
                path.unlink()
        except OSError:
            continue


def error_line(pending: Path, job: Path, exc: BaseException) -> None:
    """Append one line about a failed job to the error log beside the pending folder.

    Args:
        pending: The ``.pending`` folder.
        job: The job folder that failed.
        exc: Its error.
    """
    from datetime import UTC, datetime

    line = f"{datetime.now(UTC).isoformat()} run {job.name}: {exc.__class__.__name__}: {exc}"
    with (pending.parent / ERRORS).open("a", encoding="utf-8") as handle:
        handle.write(line.replace("\n", " ")[:1000] + "\n")


def report_earlier_errors(settings: TrackingSettings) -> None:
    """Repeat, once, the background logger's errors since the last run as a WARNING.

    Args:
        settings: The tracking settings.
    """
    folder = Path(settings.jobs)
    if not (folder / ERRORS).is_file():
        return
    text = (folder / ERRORS).read_text(encoding="utf-8", errors="replace").strip()
    (folder / ERRORS).rename(folder / f"{ERRORS}.seen")
    if text:
        last = text.splitlines()[-1]
        logger.warning(f"an earlier run could not be tracked: {last[:240]} (see {folder / (ERRORS + '.seen')})")


def wait_pending(settings: TrackingSettings, timeout: float = 120.0) -> bool:
    """Wait until the loggers have tried every job (for tests and benchmarks).

    Args:
        settings: The tracking settings.
        timeout: Seconds to wait at most.

    Returns:
        True when no job waits for its first attempt (a failed one waits on disk for a later logger).
    """
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = (Path(settings.jobs) / PENDING).glob(f"*/{JOB_FILE}")
        if not any(not (job.parent / ATTEMPTS_FILE).exists() for job in jobs):
            return True
        time.sleep(0.1)
    return False
