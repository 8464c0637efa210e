"""SuperSimpleNet's scoring in plain torch: the saved heads, batch norms folded in, on the backbone graph."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vad.models.maps import UpsampleBlur, concat_layers, separable_blur
from vad.models.scorer import GraphScorer
from vad.models.spec import ModelSpec
from vad.models.supersimplenet import SupersimplenetParams

BATCH_NORM_EPS = 1e-5  # torch's default, which anomalib's heads use
LEAKY_SLOPE = 0.2  # the segmentation head's LeakyReLU


def folded_conv(state: dict[str, torch.Tensor], conv: str, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution followed by an eval-mode batch norm, as one convolution's weight and bias.

    Args:
        state: The model's state dict.
        conv: The convolution's key prefix (``weight`` and, when present, ``bias``).
        norm: The batch norm's key prefix.

    Returns:
        (weight, bias).
    """
    weight = state[f"{conv}.weight"]
    bias = state.get(f"{conv}.bias", torch.zeros(weight.shape[0]))
    scale = state[f"{norm}.weight"] / torch.sqrt(state[f"{norm}.running_var"] + BATCH_NORM_EPS)
    folded_bias = (bias - state[f"{norm}.running_mean"]) * scale + state[f"{norm}.bias"]
    return weight * scale.view(-1, 1, 1, 1), folded_bias


class SupersimplenetScorer(GraphScorer):
    """Standardised features, adaptor and segmentation head per patch; the map's peak or the image head's logit."""

    # buffers, registered from the model's state in __init__
    mean: torch.Tensor
    std: torch.Tensor
    adaptor_weight: torch.Tensor
    adaptor_bias: torch.Tensor
    seg_weight: torch.Tensor
    seg_bias: torch.Tensor
    seg_out: torch.Tensor
    cls_weight: torch.Tensor
    cls_bias: torch.Tensor
    fc_weight: torch.Tensor
    fc_bias: torch.Tensor
    kernel: torch.Tensor

    def __init__(self, spec: ModelSpec, backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
        super().__init__(spec, backbone)
        params = spec.params_as(SupersimplenetParams)
        self.classifier = params.image_score == "classifier"
        seg_weight, seg_bias = folded_conv(state, "segdec.seg_head.0", "segdec.seg_head.1")
        cls_weight, cls_bias = folded_conv(state, "segdec.cls_conv.0", "segdec.cls_conv.1")
        tensors = {
            "mean": state["feature_mean"].view(1, -1, 1, 1),
            "std": state["feature_std"].view(1, -1, 1, 1),
            "adaptor_weight": state["adaptor.projection.weight"],
            "adaptor_bias": state["adaptor.projection.bias"],
            "seg_weight": seg_weight,
            "seg_bias": seg_bias,
            "seg_out": state["segdec.seg_head.3.weight"],
            "cls_weight": cls_weight,
            "cls_bias": cls_bias,
            "fc_weight": state["segdec.cls_fc.weight"],
            "fc_bias": state["segdec.cls_fc.bias"],
            "kernel": state["anomaly_map_generator.smoothing.kernel"],
        }
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor.detach().clone().contiguous())
        self.blur: UpsampleBlur | None = None  # the export's upsample-and-blur operator, built on first use

    @classmethod
    def state_arguments(cls, spec: ModelSpec, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """See :meth:`GraphScorer.state_arguments`: the constructor reads the state dict itself.

        Args:
            spec: The model's description.
            state: The model's state dict.

        Returns:
            ``{"state": state}``.
        """
        del spec
        return {"state": state}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, 1, H, W), as the model computes them.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            Scores and maps.
        """
        features, segmentation = self._heads(images)
        upsampled = F.interpolate(segmentation, size=self.spec.input_size, mode="bilinear")
        anomaly_map = separable_blur(upsampled, self.kernel)
        return self._image_scores(features, segmentation, anomaly_map), anomaly_map

    def graph_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same scores and maps with the upsampling and blur as two products (fixed shapes for the export).

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            Scores (B,) and maps (B, 1, H, W).
        """
        features, segmentation = self._heads(images)
        height, width = (int(side) for side in segmentation.shape[-2:])  # a trace gives sizes as tensors
        if self.blur is None:
            self.blur = UpsampleBlur((height, width), self.spec.input_size, self.kernel, "bilinear")
        anomaly_map = self.blur(segmentation[:, 0]).unsqueeze(1)
        return self._image_scores(features, segmentation, anomaly_map), anomaly_map

    def _heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised features (B, C, h, w) and segmentation logits (B, 1, h, w)."""
        pooled = F.avg_pool2d(concat_layers(self.features(images), "bilinear"), 3, stride=1, padding=1)
        features = (pooled - self.mean) / self.std
        adapted = F.conv2d(features, self.adaptor_weight, self.adaptor_bias)
        hidden = F.leaky_relu(F.conv2d(adapted, self.seg_weight, self.seg_bias), LEAKY_SLOPE)
        return features, F.conv2d(hidden, self.seg_out)

    def _image_scores(
        self, features: torch.Tensor, segmentation: torch.Tensor, anomaly_map: torch.Tensor
    ) -> torch.Tensor:
        """The map's peak, or the image head's logit (its convolution on features and logits, pooled, then linear)."""
        if not self.classifier:
            return torch.amax(anomaly_map, dim=(-2, -1)).reshape(-1)
        stacked = torch.cat([features, segmentation], dim=1)
        decoded = F.relu(F.conv2d(stacked, self.cls_weight, self.cls_bias, padding=2))
        pooled = torch.cat(
            [
                decoded.amax(dim=(-2, -1)),
                decoded.mean(dim=(-2, -1)),
                segmentation.amax(dim=(-2, -1)),
                segmentation.mean(dim=(-2, -1)),
            ],
            dim=1,
        )
        return F.linear(pooled, self.fc_weight, self.fc_bias).reshape(-1)
