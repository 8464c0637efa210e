"""Logging jobs into MLflow: one job's run (params, metrics, steps, artifacts, model), a job once, a batch of jobs."""

from __future__ import annotations

import importlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from alo.tracking.settings import TrackingSettings
from alo.tracking.spool import ATTEMPTS_FILE, JOB_FILE, MAX_ATTEMPTS, complete_jobs, error_line, sweep
from alo.tracking.store import cached_store

MAX_PARAM_CHARS = 6000


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested arguments as MLflow params: dotted keys, each other value as Python writes it (``str``).

    Args:
        values: Nested mapping.
        prefix: Key prefix.

    Returns:
        ``{"train.model_name": "patchcore", "train.img_size": "[256, 256]", ...}``.
    """
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


def log_run(mlflow: Any, client: Any, experiment_id: str, job: Path, payload: dict[str, Any]) -> str:
    """Log one job's run into an open store.

    Args:
        mlflow: The MLflow module.
        client: An ``MlflowClient`` on the store.
        experiment_id: The experiment.
        job: The job folder.
        payload: Its ``job.json``.

    Returns:
        The MLflow run id.
    """
    from mlflow.entities import Metric, Param

    record, report = payload["record"], payload["report"]
    pipeline = str(record.get("pipeline"))
    tags = {
        "pipeline": pipeline,
        "alo.run_id": str(record.get("id")),
        "mlflow.runName": f"{pipeline} {record.get('id')}",
        **{key: str(record[key]) for key in ("data_id", "param_id", "code_id", "train_id") if record.get(key)},
        **({"error": str(record["error"])[:5000]} if record.get("error") else {}),
        **{str(k): str(v) for k, v in report["tags"].items()},
    }
    if pipeline == "train":
        tags["train_id"] = str(record.get("id"))
    run = client.create_run(experiment_id, start_time=_millis(record.get("start_time")), tags=tags)
    run_id = run.info.run_id
    status = "FINISHED" if record.get("status") == "success" else "FAILED"
    try:
        now = _millis(record.get("end_time"))
        metrics = [Metric(k, float(v), now, 0) for k, v in report["metrics"].items()]
        for name, series in report["steps"].items():
            metrics.extend(Metric(name, float(value), now, int(step)) for step, value in series)
        flat = [Param(k, v) for k, v in flatten(payload["params"]).items()]
        for chunk in range(0, max(len(metrics), len(flat)), 100):
            client.log_batch(run_id, metrics=metrics[chunk : chunk + 100], params=flat[chunk : chunk + 100])
        for name, relative in report["artifacts"].items():  # each file is linked under its name in the run
            parent = str(Path(name).parent)
            client.log_artifact(run_id, str(job / relative), None if parent == "." else parent)
        if report["model"] is not None and payload.get("reporter"):  # older jobs name no reporter
            module = importlib.import_module(str(payload["reporter"]))
            with mlflow.start_run(run_id=run_id):
                module.log_model(mlflow, job / report["model"])
    finally:
        client.set_terminated(run_id, status, _millis(record.get("end_time")))
    return run_id


def log_job(job: Path) -> bool:
    """Log one job into the store its ``job.json`` names, then remove it.

    A file lock keeps it from being logged twice or beside another logger. A job that fails stays for a later
    logger, :data:`~alo.tracking.spool.MAX_ATTEMPTS` attempts in all.

    Args:
        job: The job folder.

    Returns:
        False when another logger had taken it already.
    """
    import fcntl

    with (job.parent / ".lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        if not (job / JOB_FILE).is_file():
            return False
        try:
            payload = json.loads((job / JOB_FILE).read_text(encoding="utf-8"))
            log_run(*cached_store(TrackingSettings(**payload["settings"])), job, payload)
        except BaseException:
            attempts = job / ATTEMPTS_FILE
            count = 1 + (int(attempts.read_text()) if attempts.is_file() else 0)
            if count >= MAX_ATTEMPTS:  # kept for a later logger until then (a locked database passes)
                shutil.rmtree(job, ignore_errors=True)
            else:
                attempts.write_text(str(count))
            raise
        shutil.rmtree(job, ignore_errors=True)
        return True


def run_jobs(jobs: list[Path]) -> int:
    """The background logger: log the given jobs, then any complete job an earlier logger left.

    Errors go, one line per job, to ``tracking-errors.log`` in the jobs folder.

    Args:
        jobs: Job folders (of one jobs folder).

    Returns:
        The exit code (1 when a job failed).
    """
    if not jobs:
        return 0
    pending = jobs[0].parent
    sweep(pending)
    left = [job for job in complete_jobs(pending) if job not in jobs]
    failed = 0
    for job in [*jobs, *left]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                log_job(job)
        except Exception as exc:
            error_line(pending, job, exc)
            failed = 1
    return failed


def _millis(iso: object) -> int:
    from datetime import UTC, datetime

    try:
        return int(datetime.fromisoformat(str(iso)).timestamp() * 1000)
    except ValueError:
        return int(datetime.now(UTC).timestamp() * 1000)
