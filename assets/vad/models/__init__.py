"""Model construction, scoring, and weights-only persistence (safetensors + JSON)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from alo.errors import ModelError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "train_config.json"
MODEL_NAMES = ("patchcore", "fastflow")


@dataclass
class ModelSpec:
    """Everything needed to rebuild a trained model and to read its scores."""

    model_name: str
    backbone: str
    layers: list[str]
    input_size: list[int]
    mean: list[float]
    std: list[float]
    coreset_sampling_ratio: float = 0.1
    num_neighbors: int = 9
    search: str = "auto"
    image_score: str = "reweighted"  # models saved before the option scored this way
    flow_steps: int = 8
    hidden_ratio: float = 1.0
    conv3x3_only: bool = False
    extra: dict[str, object] = field(default_factory=dict)


def build_model(spec: ModelSpec, pretrained: bool, weights_path: str | Path | None = None) -> torch.nn.Module:
    """Create the model a spec describes.

    Args:
        spec: The model description.
        pretrained: Load ImageNet weights into the backbone (False when a trained state follows).
        weights_path: A user weights file for the backbone.

    Returns:
        The model, in eval mode.
    """
    if spec.model_name == "patchcore":
        from assets.vad.models.patchcore import OfflinePatchcore

        return OfflinePatchcore(
            spec.backbone, spec.layers, spec.num_neighbors, pretrained, weights_path, spec.search, spec.image_score
        )
    from assets.vad.models.fastflow import OfflineFastflow

    return OfflineFastflow(
        tuple(spec.input_size),
        spec.backbone,
        spec.layers,
        spec.flow_steps,
        spec.conv3x3_only,
        spec.hidden_ratio,
        pretrained,
        weights_path,
    ).eval()


def save(model: torch.nn.Module, spec: ModelSpec, scoring: dict[str, object], folder: Path) -> None:
    """Write ``model.safetensors`` and ``train_config.json``.

    Args:
        model: The trained model.
        spec: Its description.
        scoring: Threshold and normalisation values, labels.
        folder: ``models/train``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().clone() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    config = {"model": asdict(spec), "scoring": scoring}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load(folder: Path) -> tuple[torch.nn.Module, ModelSpec, dict[str, object]]:
    """Rebuild a trained model from ``models/train`` (no unpickling).

    Args:
        folder: The folder :func:`save` wrote.

    Returns:
        The model in eval mode, its spec and its scoring values.

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
        spec = ModelSpec(**config["model"])
        scoring = dict(config["scoring"])
        model = build_model(spec, pretrained=False)
        model.load_state_dict(load_file(str(weights_path)), strict=True)
        if spec.model_name == "fastflow":
            model.use_channels_last()  # a loaded model only scores
    except (ValueError, KeyError, TypeError, RuntimeError, OSError, SafetensorError) as exc:
        detail = f"{exc.__class__.__name__}: {str(exc)[:120]}"
        msg = f"model error: the model in {folder} cannot be loaded ({detail}); train again"
        raise ModelError(msg) from None
    return model.eval(), spec, scoring


def predict(model: torch.nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores and anomaly maps of a batch.

    Args:
        model: A trained model.
        images: Normalised images (B, 3, H, W).

    Returns:
        Scores (B,) and anomaly maps (B, H, W) as float32 arrays.
    """
    model.eval()
    with torch.inference_mode():
        output = model(images)
    scores = output.pred_score.reshape(-1).float().numpy()
    maps = output.anomaly_map.reshape(len(images), *output.anomaly_map.shape[-2:]).float().numpy()
    return scores, maps


def predict_all(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Score batches from a loader yielding (images, indices).

    Args:
        model: A trained model.
        batches: The loader.

    Yields:
        (indices, scores, maps) per batch.
    """
    for images, indices in batches:
        scores, maps = predict(model, images)
        yield indices.numpy(), scores, maps
