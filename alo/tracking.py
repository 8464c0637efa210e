"""Experiment tracking: every train and inference run logged to MLflow, without ever costing the run.

On by default, into a local SQLite store beside the plan (``mlruns/mlflow.db``, artifacts in
``mlruns/artifacts``; no server, no network, MLflow's own telemetry off). The plan's ``control`` sets it:
``tracking: false`` turns it off, ``tracking_uri`` points elsewhere (any MLflow tracking URI; a plain path is
a folder for the SQLite store), ``tracking_experiment`` names the experiment (default: the plan's name).

Importing MLflow alone costs a default run on this machine's two cores over 5% (1.4 s of a 25 s run), so a
one-shot run (``main.py --mode train|inference|all``) does not wait for it: at the end it checks that the
store can be written (a WARNING if not), writes a job file (``.pending/`` in the store's folder) and starts
``python -m alo.tracking JOB`` in its own session; that process logs the run, then removes the job. Its
errors go to ``tracking-errors.log`` beside the store, and the next run repeats them as a WARNING. A
resident process (the edge loop) keeps MLflow loaded and logs in a background thread. What a run reports
(metrics, steps, artifacts, a model) comes from the solution package's ``tracking_report`` module.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("alo.tracking")

STORE_FOLDER = "mlruns"
DATABASE = "mlflow.db"
FINISH_TIMEOUT_S = 300.0
MAX_PARAM_CHARS = 6000


@dataclass(frozen=True)
class TrackingSettings:
    """Where runs are tracked.

    Attributes:
        enabled: Whether runs are logged.
        uri: The MLflow tracking URI.
        artifacts: The artifact location for a new experiment (None: the store's default).
        experiment: The experiment name.
    """

    enabled: bool
    uri: str
    artifacts: str | None
    experiment: str


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
        return TrackingSettings(control.tracking, uri, None, experiment)
    folder = plan.resolve(uri) if uri else plan.root / STORE_FOLDER
    return TrackingSettings(
        control.tracking, f"sqlite:///{folder / DATABASE}", (folder / "artifacts").as_uri(), experiment
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
    """Nested arguments as MLflow params: dotted keys, text values (lists as written in YAML flow style).

    Args:
        values: Nested mapping.
        prefix: Key prefix.

    Returns:
        ``{"train.model_name": "patchcore", "train.model_parameters.patchcore_backbone": ...}``.
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
    """What one run logs besides its params and tags.

    Attributes:
        metrics: Final metrics.
        steps: Per-step series, ``{name: [(step, value), ...]}``.
        artifacts: Files to log, ``{path in the run: file}``.
        tags: Extra tags.
        model: Called with the MLflow module to log the run's model (None: no model).
    """

    metrics: dict[str, float] = field(default_factory=dict)
    steps: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    model: Callable[[Any], None] | None = None


def _open_store(settings: TrackingSettings) -> tuple[Any, Any, str]:
    """Import MLflow and open (or create) the store and the experiment."""
    quiet_mlflow()
    import mlflow
    import mlflow.pyfunc  # loaded here, not while the run waits
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(settings.uri)  # the model is logged through the fluent API
    client = MlflowClient(settings.uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(settings.experiment, settings.artifacts)
    else:
        experiment_id = experiment.experiment_id
    return mlflow, client, experiment_id


def _store_folder(settings: TrackingSettings) -> Path | None:
    """The folder of a local SQLite store (None for other stores)."""
    prefix = "sqlite:///"
    return Path(settings.uri.removeprefix(prefix)).parent if settings.uri.startswith(prefix) else None


def check_store(settings: TrackingSettings) -> None:
    """Check, without MLflow, that a local store's folder can be created and written.

    Args:
        settings: The tracking settings.

    Raises:
        OSError: The folder cannot be created or written.
    """
    folder = _store_folder(settings)
    if folder is None:
        return
    (folder / PENDING).mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        msg = f"{folder} is not writable"
        raise PermissionError(msg)


PENDING = ".pending"
ERRORS = "tracking-errors.log"


class Tracker:
    """One pipeline run's tracking (see the module docstring)."""

    def __init__(self, settings: TrackingSettings, package: str, resident: bool = False) -> None:
        """Prepare tracking; a resident process starts loading MLflow in a background thread.

        Args:
            settings: The plan's tracking settings.
            package: The solution package (its ``tracking_report`` module builds the report).
            resident: The process stays up (the edge loop): log in this process, MLflow loaded once.
        """
        self.settings = settings
        self.package = package
        self.resident = resident
        self.opened: Future | None = None
        if settings.enabled and resident:
            self.opened = _resident_store(settings)

    def finish(self, record: dict[str, Any], folder: Path, params: dict[str, Any]) -> Path | str | None:
        """Log the finished run (success or error): params, tags, the report's metrics, artifacts and model.

        Args:
            record: The run's record (id, pipeline, status, ids, error, times).
            folder: The run's artifacts folder (promoted, or kept in history when it failed).
            params: The steps' arguments, by step name.

        Returns:
            The job file handed to the background logger, the MLflow run id (resident), or None when
            tracking is off or failed (one WARNING logged).
        """
        if not self.settings.enabled:
            return None
        try:
            if self.resident:
                mlflow, client, experiment_id = self.opened.result(FINISH_TIMEOUT_S)  # type: ignore[union-attr]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return log_run(mlflow, client, experiment_id, record, folder, params, self.package)
            check_store(self.settings)
            _report_earlier_errors(self.settings)
            return _hand_over(self.settings, self.package, record, folder, params)
        except Exception as exc:
            from alo.errors import one_line

            logger.warning(
                f"tracking skipped ({one_line(f'{exc.__class__.__name__}: {exc}')[:200]}); the run itself is "
                f"unaffected; fix control.tracking_uri or set control tracking: false"
            )
            return None


_resident_stores: dict[TrackingSettings, Future] = {}


def _resident_store(settings: TrackingSettings) -> Future:
    """The store of a resident process, opened once in a background thread."""
    if settings not in _resident_stores:
        opened: Future = Future()

        def work() -> None:
            try:
                opened.set_result(_open_store(settings))
            except BaseException as exc:  # reported by finish() as a WARNING
                opened.set_exception(exc)

        threading.Thread(target=work, name="alo-tracking", daemon=True).start()
        _resident_stores[settings] = opened
    return _resident_stores[settings]


def _hand_over(settings: TrackingSettings, package: str, record: dict, folder: Path, params: dict) -> Path:
    """Write the job file and start the background logger in its own session."""
    import subprocess
    import sys

    store = _store_folder(settings) or folder.parent
    pending = store / PENDING
    pending.mkdir(parents=True, exist_ok=True)
    job = pending / f"{record.get('id')}-{record.get('pipeline')}.json"
    payload = {
        "settings": settings.__dict__,
        "package": package,
        "record": record,
        "folder": str(folder),
        "params": params,
    }
    job.write_text(json.dumps(payload, default=str), encoding="utf-8")
    environment = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    root = str(Path(__file__).resolve().parents[1])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environment.get("PYTHONPATH")]))
    subprocess.Popen(  # our interpreter on our module and a job file we wrote, as an argument list
        [sys.executable, "-m", "alo.tracking", str(job)],
        cwd=root,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return job


def _report_earlier_errors(settings: TrackingSettings) -> None:
    """Repeat, once, the background logger's errors since the last run as a WARNING."""
    store = _store_folder(settings)
    if store is None or not (store / ERRORS).is_file():
        return
    text = (store / ERRORS).read_text(encoding="utf-8", errors="replace").strip()
    (store / ERRORS).rename(store / f"{ERRORS}.seen")
    if text:
        last = text.splitlines()[-1]
        logger.warning(f"an earlier run could not be tracked: {last[:240]} (see {store / (ERRORS + '.seen')})")


def wait_pending(settings: TrackingSettings, timeout: float = 120.0) -> bool:
    """Wait until the background loggers have finished (for tests and benchmarks).

    Args:
        settings: The tracking settings.
        timeout: Seconds to wait at most.

    Returns:
        True when no job is pending.
    """
    import time

    store = _store_folder(settings)
    if store is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any((store / PENDING).glob("*.json")):
            return True
        time.sleep(0.1)
    return False


def log_run(
    mlflow: Any, client: Any, experiment_id: str, record: dict, folder: Path, params: dict, package: str
) -> str:
    """Log one finished run into an open store.

    Args:
        mlflow: The MLflow module.
        client: An ``MlflowClient`` on the store.
        experiment_id: The experiment.
        record: The run's record.
        folder: The run's artifacts folder.
        params: The steps' arguments.
        package: The solution package (its ``tracking_report`` builds the report).

    Returns:
        The MLflow run id.
    """
    from mlflow.entities import Metric, Param

    report = _report(package, record, _current_folder(folder, record))
    pipeline = str(record.get("pipeline"))
    tags = {
        "pipeline": pipeline,
        "alo.run_id": str(record.get("id")),
        "mlflow.runName": f"{pipeline} {record.get('id')}",
        **{key: str(record[key]) for key in ("data_id", "param_id", "code_id", "train_id") if record.get(key)},
        **({"error": str(record["error"])[:5000]} if record.get("error") else {}),
        **report.tags,
    }
    if pipeline == "train":
        tags["train_id"] = str(record.get("id"))
    run = client.create_run(experiment_id, start_time=_millis(record.get("start_time")), tags=tags)
    run_id = run.info.run_id
    status = "FINISHED" if record.get("status") == "success" else "FAILED"
    try:
        now = _millis(record.get("end_time"))
        metrics = [Metric(k, float(v), now, 0) for k, v in report.metrics.items()]
        for name, series in report.steps.items():
            metrics.extend(Metric(name, float(value), now, int(step)) for step, value in series)
        flat = [Param(k, v) for k, v in flatten(params).items()]
        for chunk in range(0, max(len(metrics), len(flat)), 100):
            client.log_batch(run_id, metrics=metrics[chunk : chunk + 100], params=flat[chunk : chunk + 100])
        for name, path in report.artifacts.items():
            if path.is_file():
                parent = str(Path(name).parent)
                client.log_artifact(run_id, str(path), None if parent == "." else parent)
        if report.model is not None:
            with mlflow.start_run(run_id=run_id):
                report.model(mlflow)
    finally:
        client.set_terminated(run_id, status, _millis(record.get("end_time")))
    return run_id


def _current_folder(folder: Path, record: dict) -> Path:
    """Where the run's artifacts are now: promoted folders move to history when a later run replaces them."""
    try:
        found = json.loads((folder / "log" / "experimental_history.json").read_text(encoding="utf-8")).get("id")
    except (OSError, ValueError):
        found = None
    if found == record.get("id"):
        return folder
    history = folder.parent / "history" / str(record.get("pipeline")) / str(record.get("id"))
    return history if history.is_dir() else folder


def _report(package: str, record: dict, folder: Path) -> Report:
    try:
        module = importlib.import_module(f"{package}.tracking_report")
    except ModuleNotFoundError:
        return Report()
    return module.report(str(record.get("pipeline")), folder, record)


def _millis(iso: object) -> int:
    from datetime import UTC, datetime

    try:
        return int(datetime.fromisoformat(str(iso)).timestamp() * 1000)
    except ValueError:
        return int(datetime.now(UTC).timestamp() * 1000)


def run_job(job: Path) -> int:
    """The background logger: log the job's run, remove the job; errors go to ``tracking-errors.log``.

    Args:
        job: The job file.

    Returns:
        The exit code.
    """
    import fcntl

    payload = json.loads(job.read_text(encoding="utf-8"))
    settings = TrackingSettings(**payload["settings"])
    lock = (job.parent / ".lock").open("a")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # one logger at a time: a new store's tables are created once
        mlflow, client, experiment_id = _open_store(settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            log_run(
                mlflow,
                client,
                experiment_id,
                payload["record"],
                Path(payload["folder"]),
                payload["params"],
                payload["package"],
            )
    except Exception as exc:
        from datetime import UTC, datetime

        line = f"{datetime.now(UTC).isoformat()} run {payload['record'].get('id')}: {exc.__class__.__name__}: {exc}"
        with (job.parent.parent / ERRORS).open("a", encoding="utf-8") as handle:
            handle.write(line.replace("\n", " ")[:1000] + "\n")
        return 1
    finally:
        job.unlink(missing_ok=True)
        lock.close()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(run_job(Path(sys.argv[1])))
