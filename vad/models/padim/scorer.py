"""PaDiM's scoring in plain torch: Mahalanobis distances to the saved Gaussians on the backbone graph."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vad.models.maps import UpsampleBlur, concat_layers, separable_blur
from vad.models.scorer import GraphScorer
from vad.models.spec import ModelSpec


class PadimScorer(GraphScorer):
    """Distance of each patch to its position's Gaussian, upsampled and blurred; the peak is the image score."""

    def __init__(
        self,
        spec: ModelSpec,
        backbone: nn.Module,
        index: torch.Tensor,
        mean: torch.Tensor,
        inverse: torch.Tensor,
        kernel: torch.Tensor,
    ) -> None:
        super().__init__(spec, backbone)
        self.index: torch.Tensor
        self.mean: torch.Tensor
        self.inverse: torch.Tensor
        self.kernel: torch.Tensor
        for name, tensor in (("index", index), ("mean", mean), ("inverse", inverse), ("kernel", kernel)):
            self.register_buffer(name, tensor)
        self.blur: UpsampleBlur | None = None  # the export's upsample-and-blur operator, built on first use

    STATE_KEYS: ClassVar[dict[str, str]] = {
        "index": "idx",
        "mean": "gaussian.mean",
        "inverse": "gaussian.inv_covariance",
        "kernel": "anomaly_map_generator.blur.kernel",
    }

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, 1, H, W), as the model computes them.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            Scores and maps.
        """
        distances = self._distances(images)
        upsampled = F.interpolate(distances, size=tuple(self.spec.input_size), mode="bilinear", align_corners=False)
        anomaly_map = separable_blur(upsampled, self.kernel)
        return torch.amax(anomaly_map, dim=(-2, -1)).reshape(-1), anomaly_map

    def graph_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same scores and maps with the upsampling and blur as two products (fixed shapes for the export).

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            Scores (B,) and maps (B, 1, H, W).
        """
        distances = self._distances(images)
        height, width = (int(side) for side in distances.shape[-2:])  # a trace gives sizes as tensors
        if self.blur is None:
            self.blur = UpsampleBlur((height, width), self.spec.input_size, self.kernel, "bilinear")
        anomaly_map = self.blur(distances[:, 0])
        return anomaly_map.amax(dim=(1, 2)), anomaly_map.unsqueeze(1)

    def _distances(self, images: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of every patch to its position's Gaussian, (B, 1, h, w)."""
        embedding = torch.index_select(concat_layers(self.features(images), "nearest"), 1, self.index)
        batch, channels, height, width = embedding.shape
        delta = (embedding.reshape(batch, channels, height * width) - self.mean).permute(2, 0, 1)
        distances = (torch.matmul(delta, self.inverse) * delta).sum(2).permute(1, 0)
        return distances.reshape(batch, 1, height, width).clamp(0).sqrt()
