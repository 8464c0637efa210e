"""The Versions page's data: the kept model versions, the update button's state, and making a version active.

The versions come from :mod:`alo.model_versions` (``model_versions/versions.json``), read only: the list is never
written by looking at it. A model trained after the last version was kept (``--mode train``) is not a version yet;
the list says so (``unkept``) and the next update or rollback keeps it. The active version is the one whose train
run wrote ``train_artifacts/models``, the folder the resident scoring service reloads when its files change.
An update runs as a page job (:meth:`apps.web.training.Trainer.start_update`); a rollback is quick and runs in the
server under the project lock (:func:`apps.update_command.run_rollback`), while no job runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from alo.errors import LockError, ModelError, PlanError
from alo.model_versions import ModelVersion, VersionIndex, active_models, read_index
from alo.runner import train_id_of
from apps.update_command import run_rollback
from apps.web.review import waiting
from apps.web.training import JobError, JobView, Trainer
from vad.review.store import ReviewStore


class VersionOut(BaseModel):
    """One kept model version."""

    number: int
    time: str = Field(description="when it was kept (UTC, ISO)")
    train_id: str | None = Field(description="the train run that wrote it")
    made_by: str = Field(description="train (a train run) or update (main.py --mode update)")
    data_added: dict[str, int] = Field(description="an update's verdicts: ok (added to training), ng (validation)")
    validation: dict[str, Any] = Field(description="its validation figures (auroc, f1, ...)")
    validation_before: dict[str, Any] = Field(description="an update's: the figures of the version it came from")
    based_on: int | None = Field(description="an update's: the version it came from")
    active: bool = Field(description="whether it is the active model (train_artifacts/models)")


class VersionsView(BaseModel):
    """The versions, which one is active, and whether an update can start."""

    versions: list[VersionOut] = Field(description="newest first")
    active: int | None = Field(description="the active version's number (None: the active model is not kept yet)")
    unkept: str | None = Field(description="the train id of an active model not kept as a version yet")
    serves_active: bool = Field(description="whether the scoring service serves the active model's folder")
    waiting: int = Field(description="verdicts the active model has not learnt (the next update's)")
    update_blocked: str | None = Field(description="why the update button is off (None: it can start)")
    job: JobView | None = Field(description="the page's latest job (a train run or an update), lines from since")


class ActivatedOut(BaseModel):
    """What making a version active did."""

    active: int
    version: VersionOut


class UnknownVersionError(LookupError):
    """The version asked for is not kept."""


def versions_view(project: Path, served: Path, trainer: Trainer, since: int = 0) -> VersionsView:
    """The project's versions and the update button's state.

    Args:
        project: The project folder.
        served: The scoring service's ``models`` folder.
        trainer: The page's jobs.
        since: The first console line of the latest job wanted.

    Returns:
        The view.
    """
    job = trainer.job
    shown = job.view(since) if job is not None else None  # before the files: a job that ended has written them
    models = active_models(project)
    index = read_index(project)
    active = active_number(index, train_id_of(models))
    count = waiting(ReviewStore.of_project(project), models)
    blocked = None
    if shown is not None and shown.state == "running":
        blocked = f"{'a train run' if shown.kind == 'train' else 'an update'} is running"
    elif count == 0:
        blocked = "no verdicts wait: mark images OK or NG on the Review page first"
    unkept = train_id_of(models) if active is None else None
    return VersionsView(
        versions=[_out(v, v.number == active) for v in reversed(index.versions)],
        active=active,
        unkept=unkept,
        serves_active=served.resolve() == models.resolve(),
        waiting=count,
        update_blocked=blocked,
        job=shown,
    )


def active_number(index: VersionIndex, train_id: str | None) -> int | None:
    """The version whose train run wrote the active model (None when no kept version did).

    Args:
        index: The kept versions.
        train_id: The active model's train run.

    Returns:
        Its number, or None.
    """
    found = [v.number for v in index.versions if train_id is not None and v.train_id == train_id]
    return found[-1] if found else None


def served_version(project: Path, served: Path) -> int | None:
    """The kept version whose train run wrote the scoring service's model (None: not kept, or unknown).

    Args:
        project: The project folder.
        served: The scoring service's ``models`` folder.

    Returns:
        Its number, or None.
    """
    try:
        return active_number(read_index(project), train_id_of(served))
    except ModelError:
        return None


def start_update(project: Path, trainer: Trainer) -> JobView:
    """Start ``main.py --mode update`` as the page's job.

    Args:
        project: The project folder.
        trainer: The page's jobs.

    Returns:
        The job.

    Raises:
        JobError: A job runs, or no verdicts wait (409).
    """
    if waiting(ReviewStore.of_project(project), active_models(project)) == 0:
        raise JobError(409, "no verdicts wait for an update: mark images OK or NG on the Review page first")
    return trainer.start_update().view()


def make_active(project: Path, plan_path: Path, trainer: Trainer, number: int) -> ActivatedOut:
    """Make a kept version the active model (a rollback), while no job runs.

    Args:
        project: The project folder.
        plan_path: The user's plan.
        trainer: The page's jobs.
        number: The version.

    Returns:
        The version now active.

    Raises:
        UnknownVersionError: It is not kept.
        JobError: A job runs, another run holds the project, or its files are missing (409).
    """
    with trainer.exclusive():
        try:
            read_index(project).get(number)
        except PlanError as exc:
            raise UnknownVersionError(str(exc)) from None
        except ModelError as exc:  # versions.json damaged
            raise JobError(500, str(exc)) from None
        try:
            version = run_rollback(plan_path, number)
        except (LockError, ModelError, PlanError) as exc:
            raise JobError(409, str(exc)) from None
    return ActivatedOut(active=version.number, version=_out(version, True))


def _out(version: ModelVersion, active: bool) -> VersionOut:
    return VersionOut(
        number=version.number,
        time=version.time,
        train_id=version.train_id,
        made_by=version.made_by,
        data_added=version.data_added,
        validation=version.validation,
        validation_before=version.validation_before,
        based_on=version.based_on,
        active=active,
    )
