"""SuperSimpleNet: a discriminator trained on frozen features against synthetic feature-space anomalies.

Normal patch features are adapted by a linear layer; during training, Gaussian noise is added inside random
Perlin-shaped regions of some feature maps, and a segmentation head (per patch) and a classification head (per
image) learn to tell the noised regions from the rest. Scoring needs no memory bank and no search: one small
head on the backbone's features.

This module holds the parameters and the registry entry (light); ``model.py`` the model itself (anomalib's
``SupersimplenetModel`` with an offline backbone and a cached-feature training loop), ``scorer.py`` its scoring in
plain torch for loaded models.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from vad.models.spec import ModelParams


class SupersimplenetParams(ModelParams):
    """SuperSimpleNet's parameters (plan keys ``supersimplenet_*``)."""

    DEFAULT_IMG_SIZE: ClassVar[int | tuple[int, int]] = 320

    backbone: str = "tf_efficientnet_lite0"
    # Standard deviation of the synthetic anomalies' noise, in units of each feature channel's spread over the
    # training images (the features are standardised first, so one value suits every backbone).
    noise_std: float = Field(1.0, gt=0.0, le=10.0)
    # Perlin noise above this value marks a noised region (anomalib's default).
    perlin_threshold: float = Field(0.2, ge=-1.0, lt=1.0)
    # map_max: the peak of the segmentation map (the pixel head); classifier: the image head's logit.
    image_score: Literal["map_max", "classifier"] = "map_max"
    early_stopping_patience: int = Field(5, ge=1)


IMPLEMENTATION = "vad.models.supersimplenet.model:OfflineSupersimplenet"
SCORER = "vad.models.supersimplenet.scorer:SupersimplenetScorer"
