"""Where runs are tracked: the plan's tracking settings (on/off, the store's URI, the experiment, the jobs folder)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STORE_FOLDER = "mlruns"
DATABASE = "mlflow.db"


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
