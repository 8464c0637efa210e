"""A one-shot process's background logger: ``python -m alo.tracking JOB...`` in its own session."""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("alo.tracking")

ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the alo package


def start_logger(jobs: list[Path]) -> None:
    """Start one background logger for the jobs, in its own session (nothing when there are none).

    Args:
        jobs: Job folders written by :func:`~alo.tracking.jobs.write_job`.
    """
    if not jobs:
        return
    try:
        _start(jobs)
    except Exception as exc:  # no process to log with: the jobs wait on disk for the next logger
        logger.warning(
            f"tracking delayed ({exc.__class__.__name__}: {str(exc)[:160]}); the run itself is unaffected and "
            "the next run's logger logs it"
        )


def _start(jobs: list[Path]) -> None:
    import subprocess
    import sys

    environment = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    root = str(ROOT)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environment.get("PYTHONPATH")]))
    subprocess.Popen(  # our interpreter on our module and job folders we wrote, as an argument list
        [sys.executable, "-m", "alo.tracking", *map(str, jobs)],
        cwd=root,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
