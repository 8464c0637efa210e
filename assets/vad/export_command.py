"""``main.py --mode export``: export an existing trained model and run its parity gate.

The model is the plan's (``load_model_path``: a models folder or a ``model.tar.gz``, rewritten in place with
the export inside; else ``train_artifacts/models``). The gate scores the train run's validation images
(its ``train_artifacts/output/output.csv`` rows under the plan's train data folder) when they are still
there, else the images of the plan's inference data folder.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd

from alo.archive import extract_archive, make_archive
from alo.artifacts import project_lock
from alo.errors import DataError, ModelError
from alo.plan import Plan, load_plan
from assets.vad.images import IMAGE_EXTENSIONS
from assets.vad.samples import GENERATED_PATH_COLUMN

logger = logging.getLogger("assets.export")


def gate_images(plan: Plan) -> list[str]:
    """The images the gate scores: the train run's validation images, else the plan's inference images.

    Args:
        plan: The plan.

    Returns:
        Image files (absolute).

    Raises:
        DataError: Neither is found.
    """
    output = plan.root / "train_artifacts" / "output" / "output.csv"
    train_data = plan.resolve(plan.external_path.load_train_data_path)
    if output.is_file() and train_data is not None:
        frame = pd.read_csv(output, dtype=str, keep_default_na=False)
        column = next((c for c in ("image_path", GENERATED_PATH_COLUMN) if c in frame.columns), None)
        if column is not None:
            files = [train_data / name for name in frame[column] if name]
            if files and all(path.is_file() for path in files):
                return [str(path) for path in files]
    inference = plan.resolve(plan.external_path.load_inference_data_path)
    if inference is not None and inference.is_file():
        return [str(inference)]
    if inference is not None and inference.is_dir():
        found = sorted(p for p in inference.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if found:
            return [str(path) for path in found]
    msg = (
        "data error: no images to prove the export on (neither the train run's validation images nor any image "
        "in load_inference_data_path); point load_inference_data_path at a folder of product images"
    )
    raise DataError(msg)


def run_export(plan_path: str | Path) -> Path:
    """Export the plan's trained model (see the module).

    Args:
        plan_path: The plan file.

    Returns:
        The ``models/export`` folder written.

    Raises:
        ModelError: No trained model, or the export was refused (its reason in the message).
    """
    from assets.vad.exported import export_dir
    from assets.vad.models.export import export_saved

    plan = load_plan(plan_path)
    images = gate_images(plan)
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
        manifest = export_saved(folder, images)
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
