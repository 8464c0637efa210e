"""FastFlow: 2-D normalising flows map normal features to a standard normal; unlikely features are anomalous.

This module holds the parameters and the registry entry (light); ``model.py`` the model itself (anomalib),
``scorer.py`` its scoring in plain torch for loaded models.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from vad.models.spec import ModelParams


class FastflowParams(ModelParams):
    """FastFlow's parameters (plan keys ``fastflow_*``, and ``early_stopping_patience``)."""

    PLAIN_KEYS: ClassVar[frozenset[str]] = frozenset({"early_stopping_patience"})
    DEFAULT_IMG_SIZE: ClassVar[int | tuple[int, int]] = (256, 256)  # the reference guide's fixed size

    backbone: str = "tf_efficientnet_lite0"
    flow_steps: int = Field(8, ge=1, le=32)
    hidden_ratio: float = Field(1.0, gt=0.0, le=8.0)
    conv3x3_only: bool = False
    early_stopping_patience: int = Field(3, ge=1)


IMPLEMENTATION = "vad.models.fastflow.model:OfflineFastflow"
SCORER = "vad.models.fastflow.scorer:FastflowScorer"
