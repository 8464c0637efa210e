"""Building, saving and loading registered models (weights-only: safetensors and JSON files).

``models/train/`` holds ``model.safetensors`` (anomalib's state dict), ``train_config.json``
(format 2: the spec and training facts) and ``calibration.json``. Models saved before format 2
(one flat spec of both models' fields, the calibration inside ``train_config.json``) load through
:func:`migrate`, the one place that knows the old layout.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from alo.errors import ModelError
from assets.vad.calibration import CALIBRATION_FILE, Calibration
from assets.vad.models import ModelParams, ModelSpec, entry
from assets.vad.models.base import VadModel
from assets.vad.models.graph import GRAPH_FILE, export_graph, load_graph
from assets.vad.models.scorer import GraphScorer

logger = logging.getLogger("assets.models")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "train_config.json"
FORMAT = 2


@dataclass(frozen=True)
class TrainedModel:
    """A loaded model with what it was saved with.

    Attributes:
        model: The model, in eval mode, prepared for scoring: its plain-torch scorer when the folder holds the
            backbone graph, else the model itself.
        spec: Its description.
        calibration: Threshold, normalisation and class names.
        training: Facts of the train run (weights source, fit time and metrics, validation metrics).
    """

    model: VadModel | GraphScorer
    spec: ModelSpec
    calibration: Calibration
    training: dict[str, Any]


def make_spec(model_name: str, params: ModelParams, img_size: int | list[int], reference: tuple[int, int]) -> ModelSpec:
    """The spec of a model to train: canonical backbone, checked layers, input size, normalisation.

    Args:
        model_name: A registered model name.
        params: That model's parameters from the plan.
        img_size: The plan's ``img_size`` (or the model's default).
        reference: (height, width) of a training image, for an int ``img_size``.

    Returns:
        The spec.

    Raises:
        BackboneError: Unknown backbone or layer (the message names the valid ones).
    """
    import timm

    from assets.vad import backbones
    from assets.vad.images import model_input_size

    backbone = backbones.resolve_backbone(params.backbone)
    valid_layers = backbones.available_layers(backbone)
    layers = list(params.layers) if params.layers else backbones.default_layers(backbone)
    for layer in layers:
        if layer not in valid_layers:
            msg = (
                f"'{model_name}_layers' has '{layer}', not a feature layer of {backbone}; "
                f"valid layers: {', '.join(valid_layers)}"
            )
            raise backbones.BackboneError(msg)
    cfg = timm.models.get_pretrained_cfg(backbone)
    return ModelSpec(
        model_name=model_name,
        input_size=model_input_size(img_size, *reference),
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        params=params.model_copy(update={"backbone": backbone, "layers": layers}),
    )


def build_model(spec: ModelSpec, pretrained: bool = True, weights_path: str | Path | None = None) -> VadModel:
    """Create the model a spec describes.

    Args:
        spec: The model description.
        pretrained: Load ImageNet weights into the backbone (False when a trained state follows).
        weights_path: A user weights file for the backbone.

    Returns:
        The model, in eval mode.
    """
    return entry(spec.model_name).model_class().build(spec, pretrained, weights_path)


def save(model: VadModel, calibration: Calibration, training: dict[str, Any], folder: Path) -> None:
    """Write ``model.safetensors``, ``train_config.json``, ``calibration.json`` and the backbone graph.

    A backbone the graph format cannot hold is only logged: the model then scores through anomalib.

    Args:
        model: The trained model (its ``spec`` is saved).
        calibration: Its calibration.
        training: Facts of the train run.
        folder: ``models/train``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    config = {"format": FORMAT, "model": model.spec.to_dict(), "training": training}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    calibration.save(folder)
    try:
        export_graph(model.scoring_backbone(), folder)
    except (ValueError, TypeError, RuntimeError) as exc:
        logger.warning(f"backbone graph not saved ({exc}); this model will score through anomalib, with a slower start")


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


def load(folder: Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Rebuild a trained model from ``models/train`` and prepare it for scoring (no unpickling).

    Args:
        folder: The folder :func:`save` wrote.
        device: Where the model runs.

    Returns:
        The model with its spec, calibration and training facts.

    Raises:
        ModelError: Files missing or not matching.
    """
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        msg = (
            f"model error: {folder} lacks {CONFIG_FILE} or {WEIGHTS_FILE}; "
            "train again or point load_model_path at a train run"
        )
        raise ModelError(msg)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("format") == FORMAT:
            calibration_values = json.loads((folder / CALIBRATION_FILE).read_text(encoding="utf-8"))
        else:
            config, calibration_values = migrate(config)
        calibration = Calibration.from_dict(calibration_values)
        spec_values = config["model"]
        registered = entry(spec_values["model_name"])
        spec = ModelSpec.from_dict(spec_values, registered.params)
        scorer: type[GraphScorer] = registered.scorer_class()
        if (folder / GRAPH_FILE).is_file() and scorer.supports(spec):
            model = scorer.from_state(spec, load_file(str(weights_path)), load_graph(folder)).to(device)
            model.prepare()
        else:  # saved before graphs, or a form the scorer does not cover: the model itself scores
            model = build_model(spec, pretrained=False)
            model.load_state_dict(load_file(str(weights_path)), strict=True)
            model.to(device)
            model.prepare()
    except (ValueError, KeyError, TypeError, RuntimeError, OSError, SafetensorError) as exc:
        detail = f"{exc.__class__.__name__}: {str(exc)[:120]}"
        msg = f"model error: the model in {folder} cannot be loaded ({detail}); train again"
        raise ModelError(msg) from None
    return TrainedModel(model.eval(), spec, calibration, dict(config.get("training", {})))
