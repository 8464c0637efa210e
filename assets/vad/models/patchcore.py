"""PatchCore on anomalib's ``PatchcoreModel``, with offline weights and a fast coreset."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel

from alo.logs import Progress
from assets.vad.backbones import load_pretrained_weights
from assets.vad.coreset import k_center_greedy


class OfflinePatchcore(PatchcoreModel):
    """anomalib's PatchCore whose backbone weights come from offline sources.

    The state dict (``feature_extractor.*``, ``memory_bank``) is anomalib's own.
    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str],
        num_neighbors: int = 9,
        pretrained: bool = True,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__(layers=list(layers), backbone=backbone, pre_trained=False, num_neighbors=num_neighbors)
        self.weights_source = "random initialisation (pretrained: false)"
        if pretrained:
            self.weights_source = load_pretrained_weights(
                self.feature_extractor.feature_extractor, backbone, weights_path
            )
        self.eval()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings of a batch, shape (batch * h * w, dims), as in anomalib's forward.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            The embeddings.
        """
        with torch.inference_mode():
            features = self.feature_extractor(images)
            features = {layer: self.feature_pooler(feature) for layer, feature in features.items()}
            return self.reshape_embedding(self.generate_embedding(features))

    def fit(
        self,
        batches: Iterable[torch.Tensor],
        total: int,
        sampling_ratio: float,
        seed: int,
        logger: logging.Logger,
    ) -> None:
        """Build the memory bank from normal images.

        Args:
            batches: Batches of normalised OK training images.
            total: Number of images (for progress).
            sampling_ratio: Share of patch embeddings kept by the coreset.
            seed: Seed of the coreset selection.
            logger: Progress logger.
        """
        self.eval()
        progress = Progress(logger, "feature extraction", total)
        embeddings = []
        for images in batches:
            embeddings.append(self.embed(images))
            progress.update(len(images))
        bank = torch.cat(embeddings)
        del embeddings
        size = max(1, int(bank.shape[0] * sampling_ratio))
        logger.info(f"coreset: keeping {size} of {bank.shape[0]} patch embeddings ({bank.shape[1]} dims)")
        indices = k_center_greedy(bank, size, seed=seed, logger=logger)
        self.memory_bank = bank[indices].contiguous()
