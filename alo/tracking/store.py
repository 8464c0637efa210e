"""Opening an MLflow store: MLflow imported quietly (no progress bars, INFO lines or telemetry), once per process."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from alo.tracking.settings import TrackingSettings


def quiet_mlflow() -> None:
    """Keep MLflow's progress bars, INFO lines and migration lines out of the console, and its telemetry off."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # MLflow would send usage events to a web service
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its logger's level when imported
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="SOCKS support in urllib3")  # MLflow's HTTP client; no proxy is used


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


_stores: dict[TrackingSettings, tuple[Any, Any, str]] = {}


def cached_store(settings: TrackingSettings) -> tuple[Any, Any, str]:
    """:func:`open_store`, once per store and process (a failure is tried again by the next job).

    Args:
        settings: The tracking settings.

    Returns:
        What :func:`open_store` returns.
    """
    if settings not in _stores:
        _stores[settings] = open_store(settings)
    return _stores[settings]
