"""One pipeline run's tracking: snapshot the finished run as a job and hand it to a logger, never costing the run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alo.tracking.jobs import write_job
from alo.tracking.resident import resident_logger
from alo.tracking.settings import TrackingSettings
from alo.tracking.spawn import start_logger
from alo.tracking.spool import check_store, report_earlier_errors

logger = logging.getLogger("alo.tracking")

FINISH_TIMEOUT_S = 300.0


class Tracker:
    """One pipeline run's tracking (see :mod:`alo.tracking`)."""

    def __init__(self, settings: TrackingSettings, reporter: str | None, resident: bool = False) -> None:
        """Prepare tracking; a resident process starts loading MLflow in its logging thread.

        Args:
            settings: The plan's tracking settings.
            reporter: The module whose ``report`` builds the run's report and whose ``log_model`` logs its model
                (None: the run is logged with its record and parameters only).
            resident: The process stays up (the edge loop): log in this process, MLflow loaded once.
        """
        self.settings = settings
        self.reporter = reporter
        self.resident = resident
        if settings.enabled and resident:
            try:
                resident_logger(settings)
            except Exception as exc:  # no thread: finish() tries again
                logger.warning(f"tracking thread not started ({exc.__class__.__name__}: {str(exc)[:160]})")

    def finish(
        self, record: dict[str, Any], folder: Path, params: dict[str, Any], jobs: list[Path] | None = None
    ) -> Path | None:
        """Snapshot the finished run (success or error) as a job, and have it logged.

        Args:
            record: The run's record (id, pipeline, status, ids, error, times).
            folder: The run's artifacts folder (promoted, or kept in history when it failed).
            params: The steps' arguments, by step name.
            jobs: A one-shot process's job list: the job joins it and :func:`~alo.tracking.spawn.start_logger`
                starts one logger for all of them; None: a logger starts now (resident: the job is queued to its
                thread).

        Returns:
            The job folder, or None when tracking is off or failed (one WARNING logged).
        """
        if not self.settings.enabled:
            return None
        try:
            check_store(self.settings)
            if not self.resident:
                report_earlier_errors(self.settings)
            job = write_job(self.settings, self.reporter, record, folder, params)
            if self.resident:
                resident_logger(self.settings).put(job)
            elif jobs is not None:
                jobs.append(job)
            else:
                start_logger([job])
            return job
        except Exception as exc:
            from alo.errors import one_line

            logger.warning(
                f"tracking skipped ({one_line(f'{exc.__class__.__name__}: {exc}')[:200]}); the run itself is "
                f"unaffected; fix control.tracking_uri or set control tracking: false"
            )
            return None
