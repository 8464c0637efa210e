"""PaDiM: one Gaussian of the normal patch features per patch position; anomaly = Mahalanobis distance.

This module holds the parameters and the registry entry (light); ``model.py`` the model itself (anomalib),
``scorer.py`` its scoring in plain torch for loaded models.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from vad.models.spec import ModelParams


class PadimParams(ModelParams):
    """PaDiM's parameters (plan keys ``padim_*``)."""

    DEFAULT_IMG_SIZE: ClassVar[int | tuple[int, int]] = (256, 256)

    backbone: str = "mobilenetv2_100"
    # Feature channels kept (a random subset, as in the paper); None: 100, or every channel when fewer.
    n_features: int | None = Field(None, ge=1, le=4096)


IMPLEMENTATION = "vad.models.padim.model:OfflinePadim"
SCORER = "vad.models.padim.scorer:PadimScorer"
