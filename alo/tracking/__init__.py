"""Experiment tracking: every train and inference run logged to MLflow, without ever costing the run.

On by default, into a local SQLite store beside the plan (``mlruns/mlflow.db``, artifacts in
``mlruns/artifacts``; no server, no network, MLflow's own telemetry off). The plan's ``control`` sets it:
``tracking: false`` turns it off, ``tracking_uri`` points elsewhere (any MLflow tracking URI; a plain path is
a folder for the SQLite store), ``tracking_experiment`` names the experiment (default: the plan's name).

The run's own process builds what the run reports (the reporter module the runner is given, for example
``apps.mlflow.tracking_report``: metrics, steps, tags, artifact files, the model folder) the moment it ends,
and snapshots it as a job: a folder under ``.pending/`` in the jobs folder (the local store's folder; for any
other URI ``mlruns/`` beside the plan) holding ``job.json`` and hard links to the files. A later run moving or
deleting the artifacts changes nothing that is logged. MLflow itself is loaded elsewhere, since importing it alone costs
a default run on this machine's two cores over 5% (1.4 s of a 25 s run): a one-shot process
(``main.py --mode train|inference|all``) starts one ``python -m alo.tracking JOB...`` in its own session for
all its runs' jobs; a resident process (the edge loop) keeps MLflow loaded and logs in one background
thread, so that a request never waits for it (at exit it logs what is queued for up to 30 s; the rest stays on
disk); it logs its session as one run (:mod:`~alo.tracking.session`), not a run per request. A logger logs
each job once (a file lock), then removes it, and also logs the complete jobs earlier loggers left; a job that
failed stays for the next logger, up to three attempts. Errors go to
``tracking-errors.log`` in the jobs folder, and the next run repeats them as a WARNING.

One job per module: :mod:`~alo.tracking.settings` (where runs are tracked), :mod:`~alo.tracking.store` (opening
MLflow), :mod:`~alo.tracking.spool` (the jobs folder), :mod:`~alo.tracking.jobs` (snapshotting a run),
:mod:`~alo.tracking.tracker` (one run's tracking), :mod:`~alo.tracking.spawn` (the background logger process),
:mod:`~alo.tracking.resident` (the resident logging thread), :mod:`~alo.tracking.session` (a resident
session's one run), :mod:`~alo.tracking.writer` (logging jobs into
MLflow) and ``__main__`` (the background logger's command).
"""

from __future__ import annotations

from alo.tracking.jobs import Report, write_job
from alo.tracking.resident import EXIT_WAIT_S, ResidentLogger, resident_logger
from alo.tracking.settings import DATABASE, STORE_FOLDER, TrackingSettings, settings_of
from alo.tracking.spawn import start_logger
from alo.tracking.spool import (
    ATTEMPTS_FILE,
    ERRORS,
    JOB_FILE,
    MAX_ATTEMPTS,
    PENDING,
    STALE_S,
    check_store,
    wait_pending,
)
from alo.tracking.store import open_store, quiet_mlflow
from alo.tracking.tracker import FINISH_TIMEOUT_S, Tracker
from alo.tracking.writer import MAX_PARAM_CHARS, flatten, log_job, log_run, run_jobs

__all__ = [
    "ATTEMPTS_FILE",
    "DATABASE",
    "ERRORS",
    "EXIT_WAIT_S",
    "FINISH_TIMEOUT_S",
    "JOB_FILE",
    "MAX_ATTEMPTS",
    "MAX_PARAM_CHARS",
    "PENDING",
    "STALE_S",
    "STORE_FOLDER",
    "Report",
    "ResidentLogger",
    "Tracker",
    "TrackingSettings",
    "check_store",
    "flatten",
    "log_job",
    "log_run",
    "open_store",
    "quiet_mlflow",
    "resident_logger",
    "run_jobs",
    "settings_of",
    "start_logger",
    "wait_pending",
    "write_job",
]
