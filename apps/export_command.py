"""``main.py --mode export``: export an existing trained model and run its gates.

The model is the plan's (``load_model_path``: a models folder or a ``model.tar.gz``, rewritten in place with
the export inside; else ``train_artifacts/models``). The formats and precision are the plan's train args
(``export``, ``precision``; an empty ``export`` list means the default formats here: the user asked for an
export). The gates score the train run's validation images (its ``train_artifacts/output/output.csv`` rows
under the plan's train data folder, with their labels) when they are still there, else the images of the
plan's inference data folder (enough for the fp32 parity gate; int8 also needs OK training images). int8 is
calibrated and gated on the train data's OK images that are not validation images, split by
:func:`vad.export.int8.split_images`.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alo.archive import extract_archive, make_archive
from alo.artifacts import project_lock
from alo.errors import DataError, ModelError
from alo.plan import Plan, load_plan
from assets.readiness import ReadinessArgs
from vad.export.runtime import DEFAULT_FORMATS
from vad.images import IMAGE_EXTENSIONS
from vad.models.saved import read_saved
from vad.samples import GENERATED_PATH_COLUMN

logger = logging.getLogger("assets.export")


@dataclass(frozen=True)
class GateData:
    """The images an export is gated and calibrated on.

    Attributes:
        validation: Image files the gates score (absolute).
        is_ng: Their labels, or None when unknown.
        train_images: OK training image files (int8 calibration; empty when unknown).
    """

    validation: list[str]
    is_ng: np.ndarray | None = None
    train_images: list[str] = field(default_factory=list)


def _train_readiness(plan: Plan) -> ReadinessArgs:
    """The train pipeline's readiness args, validated as the train run validated them (its defaults filled in)."""
    from alo.args import validate_args

    step = next((s for s in plan.pipelines.get("train", []) if s.name == "readiness"), None)
    return validate_args(ReadinessArgs, (step.args or {}) if step else {}, step.where if step else "readiness")


def _train_run_images(plan: Plan, ok_name: str) -> GateData | None:
    """The train run's validation images and labels, and the train data's other OK images, when still there."""
    output = plan.root / "train_artifacts" / "output" / "output.csv"
    train_data = plan.resolve(plan.external_path.load_train_data_path)
    if not output.is_file() or train_data is None:
        return None
    readiness = _train_readiness(plan)
    frame = pd.read_csv(output, dtype=str, keep_default_na=False)
    column = next((c for c in (readiness.path_column, GENERATED_PATH_COLUMN) if c in frame.columns), None)
    if column is None:
        return None
    rows = frame[frame[column] != ""]
    files = [train_data / name for name in rows[column]]
    if not files or not all(path.is_file() for path in files):
        return None
    labels = rows.get(readiness.y_column)
    is_ng = None
    if labels is not None and (labels != "").all():
        is_ng = (labels != ok_name).to_numpy(dtype=bool)
    train_images = []
    tables = sorted(train_data.glob("*.csv"))
    if len(tables) == 1:
        table = pd.read_csv(tables[0], dtype=str, keep_default_na=False)
        if {readiness.path_column, readiness.y_column} <= set(table.columns):
            held_out = set(rows[column])
            ok = table[table[readiness.y_column] == ok_name][readiness.path_column]
            candidates = [train_data / name for name in ok if name and name not in held_out]
            train_images = [str(path) for path in candidates if path.is_file()]
    return GateData([str(path) for path in files], is_ng, train_images)


def gate_images(plan: Plan, ok_name: str) -> GateData:
    """The images the gates score: the train run's validation images, else the plan's inference images.

    Args:
        plan: The plan.
        ok_name: The label of OK images (the trained model's calibration: its single source on disk).

    Returns:
        The gate's images.

    Raises:
        DataError: Neither is found.
    """
    found = _train_run_images(plan, ok_name)
    if found is not None:
        return found
    inference = plan.resolve(plan.external_path.load_inference_data_path)
    if inference is not None and inference.is_file():
        return GateData([str(inference)])
    if inference is not None and inference.is_dir():
        images = sorted(p for p in inference.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if images:
            return GateData([str(path) for path in images])
    msg = (
        "data error: no images to prove the export on (neither the train run's validation images nor any image "
        "in load_inference_data_path); point load_inference_data_path at a folder of product images"
    )
    raise DataError(msg)


def export_settings(plan: Plan) -> tuple[list[str], str]:
    """The formats and precision of the plan's train args (validated as training validates them).

    Args:
        plan: The plan.

    Returns:
        The formats (the default ones when the plan lists none) and the precision.
    """
    from alo.args import validate_args
    from vad.train_settings import TrainArgs

    step = next((s for s in plan.pipelines.get("train", []) if s.name == "train"), None)
    written = (step.args or {}) if step else {}
    values = {key: value for key, value in written.items() if key in ("export", "precision")}
    if not values.get("export"):
        values["export"] = list(DEFAULT_FORMATS)
    args = validate_args(TrainArgs, values, step.where if step else "train_pipeline train")
    return list(args.export), args.precision


def run_export(plan_path: str | Path) -> Path:
    """Export the plan's trained model (see the module).

    Args:
        plan_path: The plan file.

    Returns:
        The ``models/export`` folder written.

    Raises:
        ModelError: No trained model, or the export was refused (its reason in the message).
    """
    from vad.export.runtime import export_dir
    from vad.export.writer import export_saved

    plan = load_plan(plan_path)
    formats, precision = export_settings(plan)
    source = plan.resolve(plan.external_path.load_model_path)
    with project_lock(plan.root), tempfile.TemporaryDirectory(prefix="vad-export-") as workdir:
        archive = None
        if source is None:
            models = plan.root / "train_artifacts" / "models"
        elif source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
            archive, models = source, extract_archive(source, Path(workdir) / "models")
        else:
            models = source / "models" if (source / "models").is_dir() else source
        folder = models / "train"
        if not folder.is_dir():
            msg = f"model error: no trained model in {models}; run 'main.py --mode train' first or set load_model_path"
            raise ModelError(msg)
        images = gate_images(plan, read_saved(folder).calibration.ok_name)
        manifest = export_saved(folder, images.validation, formats, precision, images.is_ng, images.train_images)
        if manifest is None or not manifest.get("accepted"):
            reason = "the model has no exportable scorer" if manifest is None else manifest.get("reason")
            msg = f"model error: export refused ({reason}); the model still scores with the torch runtime"
            raise ModelError(msg)
        if archive is None and source is None:  # the train run's archive, when it wrote one, gets it too
            saved = plan.resolve(plan.external_path.save_train_artifacts_path)
            archive = saved / "model.tar.gz" if saved is not None and (saved / "model.tar.gz").is_file() else None
        if archive is not None:
            make_archive(models, archive)
            logger.info(f"{archive} rewritten with the export inside")
        return export_dir(folder)
