"""Model versions: every model a project made active is kept, numbered, and any of them can be made active again.

Layout under the project folder (beside ``train_artifacts/``)::

    model_versions/versions.json      the versions (number, time, train id, how it was made, data added,
                                      validation figures before and after) and which one is active
    model_versions/v{N}/models/       a copy of that version's ``train_artifacts/models`` folder
    .alo/previous-models/             the replaced models folder during a switch

The active model is always ``train_artifacts/models`` (what inference, the loop, the HTTP service and exports
read), so nothing else changes; :func:`activate` copies a version there. The copy is staged first and swapped in
by two renames under the project lock, so a switch killed at any point leaves one whole models folder in place
(:func:`recover` finishes an interrupted one). A model trained or updated outside this module (``--mode train``)
is registered as a new version the next time versions are read with :func:`register_active`.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alo.errors import ModelError, PlanError

logger = logging.getLogger("alo.model_versions")

VERSIONS_DIR = "model_versions"
INDEX_FILE = "versions.json"
MODEL_RECORD = "train_run.json"  # the runner's record of the train run that wrote a models folder
TRAINING_FILE = "train/train_config.json"  # the model's training facts (validation figures, update record)


@dataclass(frozen=True)
class ModelVersion:
    """One kept model.

    Attributes:
        number: 1, 2, ...
        time: When it was kept (UTC, ISO).
        train_id: The train run that wrote it.
        made_by: ``train`` (a train run) or ``update`` (``main.py --mode update``).
        data_added: For an update: OK images added, NG images added to validation (verdicts).
        validation: Its validation figures (AUROC, F1, ... as the train run measured them).
        validation_before: For an update: the figures of the version it was made from, on its own validation.
        based_on: For an update: the version it was made from.
    """

    number: int
    time: str
    train_id: str | None
    made_by: str
    data_added: dict[str, int] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    validation_before: dict[str, Any] = field(default_factory=dict)
    based_on: int | None = None

    def folder(self, root: Path) -> Path:
        """The version's kept ``models`` folder.

        Args:
            root: The project folder.

        Returns:
            ``model_versions/v{N}/models``.
        """
        return root / VERSIONS_DIR / f"v{self.number}" / "models"


@dataclass
class VersionIndex:
    """``versions.json``: the versions and the active one."""

    versions: list[ModelVersion] = field(default_factory=list)
    active: int | None = None

    def get(self, number: int) -> ModelVersion:
        """The version with a number.

        Args:
            number: Its number.

        Returns:
            The version.

        Raises:
            PlanError: No such version (the message lists them).
        """
        for version in self.versions:
            if version.number == number:
                return version
        kept = ", ".join(str(v.number) for v in self.versions) or "none yet"
        msg = f"plan error: there is no model version {number} (versions kept: {kept}); see {VERSIONS_DIR}/{INDEX_FILE}"
        raise PlanError(msg)


def read_index(root: Path) -> VersionIndex:
    """The project's versions (none when it has none yet).

    Args:
        root: The project folder.

    Returns:
        The index.
    """
    path = root / VERSIONS_DIR / INDEX_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return VersionIndex()
    except (OSError, ValueError) as exc:
        msg = f"model error: {path} cannot be read ({exc.__class__.__name__}); restore it or remove {VERSIONS_DIR}/"
        raise ModelError(msg) from None
    versions = [ModelVersion(**entry) for entry in values.get("versions", [])]
    return VersionIndex(versions, values.get("active"))


def _write_index(root: Path, index: VersionIndex) -> None:
    path = root / VERSIONS_DIR / INDEX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"active": index.active, "versions": [asdict(version) for version in index.versions]}
    partial = path.with_name(f".{INDEX_FILE}.{uuid.uuid4().hex[:8]}")
    partial.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)  # whole or not at all


def _read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def active_models(root: Path) -> Path:
    """The active ``models`` folder of a project.

    Args:
        root: The project folder.

    Returns:
        ``train_artifacts/models``.
    """
    return root / "train_artifacts" / "models"


def recover(root: Path) -> None:
    """Finish a switch that was interrupted between its two renames (the old models folder put back).

    Args:
        root: The project folder.
    """
    previous = root / ".alo" / "previous-models"
    target = active_models(root)
    if previous.exists():
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)
        else:
            logger.warning(f"restoring {target} from an interrupted version switch")
            previous.replace(target)
    for stale in (root / ".alo").glob("staging-models-*"):
        shutil.rmtree(stale, ignore_errors=True)


def register_active(root: Path, made_by: str = "train", based_on: int | None = None) -> ModelVersion:
    """The version of the active model: kept as a new version when no version holds its train run yet.

    Args:
        root: The project folder.
        made_by: ``train`` or ``update``: how a new version was made.
        based_on: For an update, the version it was made from.

    Returns:
        The active model's version.

    Raises:
        ModelError: The project has no trained model.
    """
    recover(root)
    models = active_models(root)
    record = _read_json(models / MODEL_RECORD)
    if not record:
        msg = f"model error: {models} holds no trained model; run 'main.py --mode train' first"
        raise ModelError(msg)
    index = read_index(root)
    train_id = record.get("train_id")
    for version in index.versions:
        if version.train_id == train_id:
            if index.active != version.number:
                index.active = version.number
                _write_index(root, index)
            return version
    training = _read_json(models / TRAINING_FILE).get("training", {})
    update = training.get("update") or {}
    before = index.get(based_on).validation if based_on is not None else {}
    version = ModelVersion(
        number=max((v.number for v in index.versions), default=0) + 1,
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        train_id=train_id,
        made_by=made_by,
        data_added={"ok": int(update.get("ok", 0)), "ng": int(update.get("ng", 0))} if update else {},
        validation=dict(training.get("validation", {})),
        validation_before=dict(before),
        based_on=based_on,
    )
    kept = version.folder(root)
    partial = kept.with_name(f".models-{uuid.uuid4().hex[:8]}")
    shutil.copytree(models, partial)
    if kept.exists():  # a copy an interrupted registration left: this one replaces it
        shutil.rmtree(kept)
    partial.replace(kept)
    index.versions.append(version)
    index.active = version.number
    _write_index(root, index)
    logger.info(f"model version {version.number} kept ({made_by}, train run {train_id})")
    return version


def activate(root: Path, number: int) -> ModelVersion:
    """Make a kept version the active model (``train_artifacts/models``), the replaced one kept as a version.

    Call it under the project lock (:func:`alo.artifacts.project_lock`).

    Args:
        root: The project folder.
        number: The version.

    Returns:
        The version now active.

    Raises:
        PlanError: No such version.
        ModelError: Its kept folder is missing.
    """
    register_active(root)  # the model being replaced is kept first, whatever made it
    index = read_index(root)
    version = index.get(number)
    source = version.folder(root)
    if not (source / MODEL_RECORD).is_file():
        msg = f"model error: model version {number} has no files in {source}; it cannot be made active"
        raise ModelError(msg)
    internal = root / ".alo"
    internal.mkdir(exist_ok=True)
    staged = internal / f"staging-models-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, staged)
    target, previous = active_models(root), internal / "previous-models"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.replace(previous)
    staged.replace(target)
    shutil.rmtree(previous, ignore_errors=True)
    index.active = number
    _write_index(root, index)
    logger.info(f"model version {number} is active ({target})")
    return version
