"""A saved model's description read without torch: its spec, calibration and training facts.

``models/train/`` holds ``model.safetensors`` (anomalib's state dict), ``train_config.json``
(format 2: the spec and training facts) and ``calibration.json``. Models saved before format 2
(one flat spec of both models' fields, the calibration inside ``train_config.json``) load through
:func:`migrate`, the one place that knows the old layout. Both the torch runtime
(:mod:`vad.models.factory`) and the exported one (:mod:`vad.export.runtime`) read models here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alo.errors import ModelError
from vad.calibration import CALIBRATION_FILE, Calibration
from vad.models import ModelSpec, entry

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "train_config.json"
FORMAT = 2


@dataclass(frozen=True)
class SavedModel:
    """What ``train_config.json`` and ``calibration.json`` say of a trained model.

    Attributes:
        spec: Its description.
        calibration: Threshold, normalisation and class names.
        training: Facts of the train run.
    """

    spec: ModelSpec
    calibration: Calibration
    training: dict[str, Any]


def read_saved(folder: Path) -> SavedModel:
    """Read a saved model's spec and calibration (old layouts migrated).

    Args:
        folder: ``models/train``.

    Returns:
        The description.

    Raises:
        ModelError: The files are missing or unreadable.
    """
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        msg = f"model error: {folder} lacks {CONFIG_FILE}; train again or point load_model_path at a train run"
        raise ModelError(msg)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("format") == FORMAT:
            calibration_values = json.loads((folder / CALIBRATION_FILE).read_text(encoding="utf-8"))
        else:
            config, calibration_values = migrate(config)
        calibration = Calibration.from_dict(calibration_values)
        spec_values = config["model"]
        spec = ModelSpec.from_dict(spec_values, entry(spec_values["model_name"]).params)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        detail = f"{exc.__class__.__name__}: {str(exc)[:120]}"
        msg = f"model error: the model in {folder} cannot be loaded ({detail}); train again"
        raise ModelError(msg) from None
    return SavedModel(spec, calibration, dict(config.get("training", {})))


def migrate(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The format-2 ``train_config.json`` and calibration of a model saved before format 2.

    Old layout: ``model`` is one flat spec holding every model's fields; ``scoring`` holds the
    threshold, ``min``/``max``, ``ok_class``/``ng_name``, the method and the training facts. A PatchCore
    saved before ``image_score`` existed scored with anomalib's re-weighted score and keeps it.

    Args:
        config: The old ``train_config.json``.

    Returns:
        (format-2 config, calibration values).
    """
    flat, scoring = dict(config["model"]), dict(config["scoring"])
    name = str(flat["model_name"])
    params_class = entry(name).params
    params = {field: flat[field] for field in params_class.model_fields if field in flat}
    if name == "patchcore" and "image_score" not in flat:
        params["image_score"] = "reweighted"
    spec = {key: flat[key] for key in ("model_name", "input_size", "mean", "std")} | {"params": params}
    calibration = {
        "threshold": scoring["threshold"],
        "low": scoring["min"],
        "high": scoring["max"],
        "ok_name": scoring["ok_class"],
        "ng_name": scoring["ng_name"],
        "method": scoring.get("threshold_method", "F1"),
        "percentile": scoring.get("percentile", 0.8),
    }
    facts = ("weights_source", "fit_seconds", "fit_metrics", "validation")
    training = {key: scoring[key] for key in facts if key in scoring}
    return {"format": FORMAT, "model": spec, "training": training}, calibration
