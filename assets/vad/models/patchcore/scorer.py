"""PatchCore's scoring in plain torch (and faiss): the model's memory bank on the saved backbone graph."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from assets.vad.models.maps import concat_layers, separable_blur
from assets.vad.models.patchcore.search import bank_search, exact_nearest
from assets.vad.models.scorer import GraphScorer
from assets.vad.models.spec import ModelSpec


class PatchcoreScorer(GraphScorer):
    """Nearest bank row of every patch, the map upsampled and blurred, its peak as the image score."""

    def __init__(
        self, spec: ModelSpec, backbone: nn.Module, bank: torch.Tensor, centroids: torch.Tensor, kernel: torch.Tensor
    ) -> None:
        super().__init__(spec, backbone)
        self.bank: torch.Tensor
        self.kernel: torch.Tensor
        self.register_buffer("bank", bank)
        self.register_buffer("kernel", kernel)
        self.search = bank_search(bank, centroids)

    @classmethod
    def supports(cls, spec: ModelSpec) -> bool:
        """The map-peak image score only (models scoring with anomalib's re-weighting keep the model).

        Args:
            spec: The model's description.

        Returns:
            True for ``image_score: map_max``.
        """
        return spec.params.image_score == "map_max"  # type: ignore[attr-defined]

    @classmethod
    def from_state(cls, spec: ModelSpec, state: dict[str, torch.Tensor], backbone: nn.Module) -> PatchcoreScorer:
        """See :meth:`GraphScorer.from_state`.

        Args:
            spec: The model's description.
            state: The model's state dict.
            backbone: The backbone graph.

        Returns:
            The scorer.
        """
        return cls(
            spec, backbone, state["memory_bank"], state["search_centroids"], state["anomaly_map_generator.blur.kernel"]
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, 1, H, W), as the model computes them.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            Scores and maps.
        """
        pooled = [F.avg_pool2d(feature, 3, 1, 1) for feature in self.features(images)]
        embedding = concat_layers(pooled, "bilinear")
        batch, dims, height, width = embedding.shape
        queries = embedding.permute(0, 2, 3, 1).reshape(-1, dims)
        if queries.device.type == "cpu":
            distances, _ = self.search.nearest(queries)
        else:
            distances, _ = exact_nearest(self.bank.to(queries.device), queries, 1)
        patch_scores = distances.reshape(batch, 1, height, width)
        anomaly_map = separable_blur(F.interpolate(patch_scores, size=tuple(self.spec.input_size)), self.kernel)
        return torch.amax(anomaly_map, dim=(-2, -1)).reshape(batch), anomaly_map
