"""Building, saving and loading registered models (weights-only: safetensors and JSON files).

The files are described in :mod:`vad.models.saved`, which reads a model's spec and calibration
(and migrates old layouts) without torch; this module builds the torch model or scorer on them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from alo.errors import ModelError
from vad.batches import to_tensor
from vad.calibration import Calibration
from vad.models import ModelParams, ModelSpec, entry
from vad.models.base import VadModel
from vad.models.graph import GRAPH_FILE, export_graph, load_graph
from vad.models.saved import CONFIG_FILE, FORMAT, WEIGHTS_FILE, read_saved
from vad.models.scorer import GraphScorer
from vad.ood import OodCheck

logger = logging.getLogger("assets.models")


@dataclass(frozen=True)
class TrainedModel:
    """A loaded model with what it was saved with.

    Attributes:
        model: The model, in eval mode, prepared for scoring: its plain-torch scorer when the folder holds the
            backbone graph, else the model itself.
        spec: Its description.
        calibration: Threshold, normalisation and class names.
        training: Facts of the train run (weights source, fit time and metrics, validation metrics).
        runtime: ``torch``.
        ood: Its out-of-distribution check, or None where it was saved without one.
    """

    model: VadModel | GraphScorer
    spec: ModelSpec
    calibration: Calibration
    training: dict[str, Any]
    runtime: str = "torch"
    ood: OodCheck | None = None

    @property
    def label(self) -> str:
        """The runtime as the log names it."""
        return self.runtime

    def score_images(self, pictures: Sequence[Image.Image], maps: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw image scores and raw anomaly maps of RGB pictures (resized and normalised as in training).

        Args:
            pictures: RGB images of any size.
            maps: Return the maps (else None; a scorer may then skip their work).

        Returns:
            Scores (B,) and maps (B, H, W) or None, float32.
        """
        return self.model.score(self._tensor(pictures), maps)

    def score_described(
        self, pictures: Sequence[Image.Image], maps: bool
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """:meth:`score_images` and the pictures' out-of-distribution descriptors (None without a check).

        Args:
            pictures: RGB images of any size.
            maps: Return the maps.

        Returns:
            Scores (B,), maps (B, H, W) or None, descriptors (B, D) or None.
        """
        tensor = self._tensor(pictures)
        if self.ood is None:
            return (*self.model.score(tensor, maps), None)
        return self.model.score_described(tensor, maps)

    def _tensor(self, pictures: Sequence[Image.Image]) -> torch.Tensor:
        spec = self.spec
        return torch.stack([to_tensor(picture, spec.input_size, spec.mean, spec.std) for picture in pictures])


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
    from vad import backbones
    from vad.backbones import timm
    from vad.images import model_input_size

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
    if cfg is None:
        msg = f"timm has no pretrained configuration (normalisation mean and std) for {backbone}"
        raise backbones.BackboneError(msg)
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
    weights_path = folder / WEIGHTS_FILE
    saved = read_saved(folder)
    spec, calibration = saved.spec, saved.calibration
    if not weights_path.is_file():
        msg = f"model error: {folder} lacks {WEIGHTS_FILE}; train again or point load_model_path at a train run"
        raise ModelError(msg)
    try:
        registered = entry(spec.model_name)
        scorer = registered.scorer_class()
        model: GraphScorer | VadModel
        if (folder / GRAPH_FILE).is_file() and scorer.supports(spec):
            model = scorer.from_state(spec, load_file(str(weights_path)), load_graph(folder)).to(device)
            model.prepare()
        else:  # saved before graphs, or a form the scorer does not cover: the model itself scores
            model = build_model(spec, pretrained=False)
            model.load_state_dict(load_file(str(weights_path)), strict=True)
            model.to(device)
            model.prepare()
        ood = OodCheck.load(folder)
    except (ValueError, KeyError, TypeError, RuntimeError, OSError, SafetensorError) as exc:
        detail = f"{exc.__class__.__name__}: {str(exc)[:120]}"
        msg = f"model error: the model in {folder} cannot be loaded ({detail}); train again"
        raise ModelError(msg) from None
    return TrainedModel(model.eval(), spec, calibration, saved.training, ood=ood)
