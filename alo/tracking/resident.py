"""A resident process's logging thread (the edge loop): MLflow opened once, jobs and calls run off the request path."""

from __future__ import annotations

import logging
import queue
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

from alo.tracking.settings import TrackingSettings
from alo.tracking.spool import PENDING, complete_jobs, error_line, sweep
from alo.tracking.store import quiet_mlflow
from alo.tracking.writer import log_job

logger = logging.getLogger("alo.tracking")

EXIT_WAIT_S = 30.0


class ResidentLogger:
    """A resident process's logging thread: MLflow opened once, jobs logged one at a time, off the request path.

    It first queues the complete jobs earlier processes left in the jobs folder. The thread is not a daemon: when
    the process ends (the main thread is done) it logs what is still queued for at most :data:`EXIT_WAIT_S`,
    finishing the job it is on, and leaves the rest on disk for the next logger.
    """

    def __init__(self, settings: TrackingSettings) -> None:
        self.jobs: queue.SimpleQueue[Path | Callable[[], object]] = queue.SimpleQueue()
        pending = Path(settings.jobs) / PENDING
        sweep(pending)
        for left in complete_jobs(pending):
            self.jobs.put(left)
        threading.Thread(target=self._work, name="alo-tracking", daemon=False).start()

    def put(self, job: Path) -> None:
        """Queue a job for the thread.

        Args:
            job: A job folder.
        """
        self.jobs.put(job)

    def call(self, work: Callable[[], object]) -> None:
        """Queue a call for the thread, in order with the jobs (a session's metrics, say).

        Args:
            work: What to run; an exception it raises is one WARNING.
        """
        self.jobs.put(work)

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far has run.

        Args:
            timeout: Most seconds to wait.

        Returns:
            False when the thread had not got there after ``timeout``.
        """
        done = threading.Event()
        self.jobs.put(done.set)
        return done.wait(timeout)

    def _next(self, deadline: float | None) -> Path | Callable[[], object] | None:
        """The next job; None once the process has ended and the queue is empty or the exit wait is over."""
        import time

        while True:
            if deadline is not None and time.monotonic() > deadline:
                return None
            try:
                return self.jobs.get(timeout=0.2)
            except queue.Empty:
                if not threading.main_thread().is_alive():
                    return None

    def _work(self) -> None:
        import time

        quiet_mlflow()
        for module in ("mlflow", "alembic", "sqlalchemy"):  # their warnings, not the serving thread's
            warnings.filterwarnings("ignore", module=rf"{module}(\..*)?$")
        deadline = None
        while (job := self._next(deadline)) is not None:
            if isinstance(job, Path):
                try:
                    log_job(job)
                except BaseException as exc:  # one WARNING a job; the thread goes on
                    error_line(job.parent, job, exc)
                    logger.warning(f"tracking of {job.name} failed ({exc.__class__.__name__}: {str(exc)[:200]})")
            else:
                try:
                    job()
                except Exception as exc:  # one WARNING a call; the thread goes on
                    logger.warning(f"tracking failed ({exc.__class__.__name__}: {str(exc)[:200]})")
            if deadline is None and not threading.main_thread().is_alive():
                deadline = time.monotonic() + EXIT_WAIT_S


_resident_loggers: dict[TrackingSettings, ResidentLogger] = {}


def resident_logger(settings: TrackingSettings) -> ResidentLogger:
    """The process's one logging thread for a store (started on the first call).

    Args:
        settings: The tracking settings.

    Returns:
        The logger.
    """
    if settings not in _resident_loggers:
        _resident_loggers[settings] = ResidentLogger(settings)
    return _resident_loggers[settings]
