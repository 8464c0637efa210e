"""PatchCore: a memory bank of normal patch features; a patch is as anomalous as its nearest bank row is far.

This module holds the parameters and the registry entry (light); ``model.py`` the model itself (anomalib),
``scorer.py`` its scoring in plain torch for loaded models.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from vad.models.spec import ModelParams


class PatchcoreParams(ModelParams):
    """PatchCore's parameters (plan keys ``patchcore_*``), defaults chosen in BENCHMARKS.md."""

    # PatchCore gains most from resolution (small defects span more stride-8 patches): an int keeps the aspect ratio.
    DEFAULT_IMG_SIZE: ClassVar[int | tuple[int, int]] = 320

    # EfficientNet-Lite0 finds real cracks better than MobileNetV2 (BENCHMARKS.md "Accuracy: real defects"): image
    # AUROC 0.956 against 0.947 on the monocrystalline cells, every split, and no loss on the generated products.
    backbone: str = "tf_efficientnet_lite0"
    coreset_sampling_ratio: float = Field(0.1, gt=0.0, le=1.0)
    num_neighbors: int = Field(9, ge=1)
    search: Literal["auto", "exact"] = "auto"
    image_score: Literal["map_max", "reweighted"] = "map_max"


IMPLEMENTATION = "vad.models.patchcore.model:OfflinePatchcore"
SCORER = "vad.models.patchcore.scorer:PatchcoreScorer"
TAIL = "vad.models.patchcore.tail:PatchcoreTail"  # numpy and faiss after the exported graph (no torch)
