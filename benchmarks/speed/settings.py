"""The speed benchmark's settings: image size, batch, each model's backbone and layers, where it works."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from benchmarks.harness.paths import RESULTS

if TYPE_CHECKING:
    from vad.models import ModelSpec


class PatchcoreSettings(TypedDict):
    """PatchCore's backbone, feature layers and coreset sampling ratio."""

    backbone: str
    layers: list[str]
    ratio: float


class FastflowSettings(TypedDict):
    """FastFlow's backbone and feature layers."""

    backbone: str
    layers: list[str]


WORK = RESULTS / "speed"
LOG = RESULTS / "speed-rows.jsonl"
SIZE = 256
BATCH = 8
PATCHCORE: PatchcoreSettings = {"backbone": "mobilenetv2_100", "layers": ["blocks.2", "blocks.4"], "ratio": 0.1}
FASTFLOW: FastflowSettings = {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"]}


def model_spec(
    model: str, backbone: str, layers: list[str], mean: tuple[float, ...], std: tuple[float, ...]
) -> ModelSpec:
    """A model spec at the benchmark's size, the model's other parameters at their defaults.

    Args:
        model: The registered model name.
        backbone: Its backbone.
        layers: Its feature layers.
        mean: Normalisation mean (RGB).
        std: Normalisation standard deviation (RGB).

    Returns:
        The :class:`~vad.models.ModelSpec`.
    """
    from vad.models import ModelSpec, entry

    params = entry(model).params(backbone=backbone, layers=list(layers))
    return ModelSpec(model, (SIZE, SIZE), tuple(mean), tuple(std), params)
