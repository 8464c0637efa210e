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
disk). A logger logs each job once (a file lock), then removes it, and also logs the complete jobs earlier
loggers left; a job that failed stays for the next logger, up to three attempts. Errors go to
``tracking-errors.log`` in the jobs folder, and the next run repeats them as a WARNING.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import queue
import shutil
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("alo.tracking")

STORE_FOLDER = "mlruns"
DATABASE = "mlflow.db"
FINISH_TIMEOUT_S = 300.0
EXIT_WAIT_S = 30.0
MAX_PARAM_CHARS = 6000
PENDING = ".pending"
ERRORS = "tracking-errors.log"
JOB_FILE = "job.json"
MAX_ATTEMPTS = 3  # a job that failed this often is dropped (its errors are in the error log)
ATTEMPTS_FILE = "attempts"
STALE_S = 3600.0  # a job folder without job.json this old was left by a process that died writing it


@dataclass(frozen=True)
class TrackingSettings:
    """Where runs are tracked.

    Attributes:
        enabled: Whether runs are logged.
        uri: The MLflow tracking URI.
        artifacts: The artifact location for a new experiment (None: the store's default).
        experiment: The experiment name.
        jobs: The local folder of the pending jobs and the error log.
    """

    enabled: bool
    uri: str
    artifacts: str | None
    experiment: str
    jobs: str


def settings_of(plan: Any) -> TrackingSettings:
    """The plan's tracking settings.

    Args:
        plan: The :class:`~alo.plan.Plan`.

    Returns:
        The settings (the local SQLite store beside the plan unless ``tracking_uri`` says otherwise).
    """
    control = plan.control
    experiment = control.tracking_experiment or plan.name
    uri = control.tracking_uri
    if uri and "://" in uri:
        return TrackingSettings(control.tracking, uri, None, experiment, str(plan.root / STORE_FOLDER))
    folder = plan.resolve(uri) if uri else plan.root / STORE_FOLDER
    return TrackingSettings(
        control.tracking, f"sqlite:///{folder / DATABASE}", (folder / "artifacts").as_uri(), experiment, str(folder)
    )


def quiet_mlflow() -> None:
    """Keep MLflow's progress bars, INFO lines and migration lines out of the console, and its telemetry off."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # MLflow would send usage events to a web service
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its logger's level when imported
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="SOCKS support in urllib3")  # MLflow's HTTP client; no proxy is used


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


@dataclass
class Report:
    """What one run logs besides its params and tags (built by the run's own process).

    Attributes:
        metrics: Final metrics.
        steps: Per-step series, ``{name: [(step, value), ...]}``.
        artifacts: Files to log, ``{path in the run: file}``.
        tags: Extra tags.
        model: A folder the reporter's ``log_model(mlflow, folder)`` logs as the run's model.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    steps: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    model: Path | None = None


def open_store(settings: TrackingSettings) -> tuple[Any, Any, str]:
    """Import MLflow (quietly) and open, or create, the store and the experiment.

    Args:
        settings: The tracking settings.

    Returns:
        The ``mlflow`` module (its tracking URI set), an ``MlflowClient`` on the store, the experiment id.
    """
    quiet_mlflow()
    import mlflow
    import mlflow.pyfunc  # loaded here, not while a run waits
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(settings.uri)  # the model is logged through the fluent API
    client = MlflowClient(settings.uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(settings.experiment, settings.artifacts)
    else:
        experiment_id = experiment.experiment_id
    return mlflow, client, experiment_id


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


class Tracker:
    """One pipeline run's tracking (see the module docstring)."""

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
                _resident_logger(settings)
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
            jobs: A one-shot process's job list: the job joins it and :func:`start_logger` starts one logger for
                all of them; None: a logger starts now (resident: the job is queued to its thread).

        Returns:
            The job folder, or None when tracking is off or failed (one WARNING logged).
        """
        if not self.settings.enabled:
            return None
        try:
            check_store(self.settings)
            if not self.resident:
                _report_earlier_errors(self.settings)
            job = write_job(self.settings, self.reporter, record, folder, params)
            if self.resident:
                _resident_logger(self.settings).put(job)
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


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (copy across file systems) a file or a folder's files to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link)
    else:
        link(str(source), str(target))


def write_job(settings: TrackingSettings, reporter: str | None, record: dict, folder: Path, params: dict) -> Path:
    """Build the run's report now and snapshot it with its files as a job folder (``job.json`` written last).

    Args:
        settings: The tracking settings.
        reporter: The reporter module (see :class:`Tracker`).
        record: The run's record.
        folder: The run's artifacts folder.
        params: The steps' arguments.

    Returns:
        The job folder.
    """
    report = _report(reporter, record, folder)
    job = Path(settings.jobs) / PENDING / f"{record.get('id')}-{record.get('pipeline')}"
    shutil.rmtree(job, ignore_errors=True)  # a half-written snapshot of this same run
    job.mkdir(parents=True)
    try:
        _snapshot(job, settings, reporter, record, params, report)
    except BaseException:
        shutil.rmtree(job, ignore_errors=True)  # no half-written job is left behind
        raise
    return job


def _snapshot(
    job: Path, settings: TrackingSettings, reporter: str | None, record: dict, params: dict, report: Report
) -> None:
    """Link the report's files into the job folder and write its ``job.json`` (last, by a rename)."""
    artifacts = {}
    for index, (name, path) in enumerate(sorted(report.artifacts.items())):
        if path.is_file():
            relative = f"files/{index}/{Path(name).name}"
            _link_tree(path, job / relative)
            artifacts[name] = relative
    model = f"model/{report.model.name}" if report.model is not None and report.model.is_dir() else None
    if model is not None:
        _link_tree(report.model, job / model)  # type: ignore[arg-type]
    payload = {
        "settings": asdict(settings),
        "reporter": reporter,
        "record": record,
        "params": params,
        "report": {
            "metrics": report.metrics,
            "steps": report.steps,
            "tags": report.tags,
            "artifacts": artifacts,
            "model": model,
        },
    }
    written = job / f"{JOB_FILE}.part"
    written.write_text(json.dumps(payload, default=str), encoding="utf-8")
    written.rename(job / JOB_FILE)


def start_logger(jobs: list[Path]) -> None:
    """Start one background logger for the jobs, in its own session (nothing when there are none).

    Args:
        jobs: Job folders written by :func:`write_job`.
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
    root = str(Path(__file__).resolve().parents[1])
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


class _ResidentLogger:
    """A resident process's logging thread: MLflow opened once, jobs logged one at a time, off the request path.

    It first queues the complete jobs earlier processes left in the jobs folder. The thread is not a daemon: when
    the process ends (the main thread is done) it logs what is still queued for at most :data:`EXIT_WAIT_S`,
    finishing the job it is on, and leaves the rest on disk for the next logger.
    """

    def __init__(self, settings: TrackingSettings) -> None:
        self.jobs: queue.SimpleQueue[Path] = queue.SimpleQueue()
        pending = Path(settings.jobs) / PENDING
        _sweep(pending)
        for left in sorted(p.parent for p in pending.glob(f"*/{JOB_FILE}")):
            self.jobs.put(left)
        threading.Thread(target=self._work, name="alo-tracking", daemon=False).start()

    def put(self, job: Path) -> None:
        self.jobs.put(job)

    def _next(self, deadline: float | None) -> Path | None:
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
            try:
                log_job(job)
            except BaseException as exc:  # one WARNING a job; the thread goes on
                _error_line(job.parent, job, exc)
                logger.warning(f"tracking of {job.name} failed ({exc.__class__.__name__}: {str(exc)[:200]})")
            if deadline is None and not threading.main_thread().is_alive():
                deadline = time.monotonic() + EXIT_WAIT_S


_resident_loggers: dict[TrackingSettings, _ResidentLogger] = {}


def _resident_logger(settings: TrackingSettings) -> _ResidentLogger:
    if settings not in _resident_loggers:
        _resident_loggers[settings] = _ResidentLogger(settings)
    return _resident_loggers[settings]


def _report_earlier_errors(settings: TrackingSettings) -> None:
    """Repeat, once, the background logger's errors since the last run as a WARNING."""
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
    logger, :data:`MAX_ATTEMPTS` attempts in all.

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
            log_run(*_store(TrackingSettings(**payload["settings"])), job, payload)
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


_stores: dict[TrackingSettings, tuple[Any, Any, str]] = {}


def _store(settings: TrackingSettings) -> tuple[Any, Any, str]:
    """:func:`open_store`, once per store and process (a failure is tried again by the next job)."""
    if settings not in _stores:
        _stores[settings] = open_store(settings)
    return _stores[settings]


def _report(reporter: str | None, record: dict, folder: Path) -> Report:
    if reporter is None:
        return Report()
    module = importlib.import_module(reporter)
    return module.report(str(record.get("pipeline")), folder, record)


def _millis(iso: object) -> int:
    from datetime import UTC, datetime

    try:
        return int(datetime.fromisoformat(str(iso)).timestamp() * 1000)
    except ValueError:
        return int(datetime.now(UTC).timestamp() * 1000)


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
    _sweep(pending)
    left = sorted(p.parent for p in pending.glob(f"*/{JOB_FILE}") if p.parent not in jobs)
    failed = 0
    for job in [*jobs, *left]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                log_job(job)
        except Exception as exc:
            _error_line(pending, job, exc)
            failed = 1
    return failed


def _sweep(pending: Path) -> None:
    """Remove what no logger will log: job folders a dying process left without ``job.json``, old job files."""
    import time

    for path in pending.iterdir() if pending.is_dir() else []:
        try:
            if path.is_dir() and not (path / JOB_FILE).exists() and time.time() - path.stat().st_mtime > STALE_S:
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file() and path.suffix == ".json":  # this module's earlier job format
                path.unlink()
        except OSError:
            continue


def _error_line(pending: Path, job: Path, exc: BaseException) -> None:
    from datetime import UTC, datetime

    line = f"{datetime.now(UTC).isoformat()} run {job.name}: {exc.__class__.__name__}: {exc}"
    with (pending.parent / ERRORS).open("a", encoding="utf-8") as handle:
        handle.write(line.replace("\n", " ")[:1000] + "\n")


if __name__ == "__main__":
    import sys

    sys.exit(run_jobs([Path(arg) for arg in sys.argv[1:]]))
