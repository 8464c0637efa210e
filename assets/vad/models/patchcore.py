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

CHUNK_PATCHES = 16384
MERGE_FACTOR = 2.0
QUERY_BLOCK = 2048  # query patches per distance block: 2048 x bank rows x 4 bytes at a time


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

    def nearest_neighbors(self, embedding: torch.Tensor, n_neighbors: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact nearest memory-bank rows of each query, as anomalib's method returns them.

        anomalib materialises the full query x bank distance matrix and takes its square root
        everywhere; here each block of queries is one ``addmm`` against the bank and its squared norms,
        the minimum is taken on squared distances, and only the winners get the query norm
        and the square root.

        Args:
            embedding: Query embeddings (N, D).
            n_neighbors: Neighbours to return per query.

        Returns:
            Distances (N,) or (N, k) and memory-bank indices of the same shape.
        """
        bank = self.memory_bank
        bank_squared = (bank * bank).sum(dim=1)  # ~D x bank rows: nothing beside the addmm's N x that
        distances, indices = [], []
        for block in embedding.split(QUERY_BLOCK):
            squared = torch.addmm(bank_squared.unsqueeze(0), block, bank.T, beta=1.0, alpha=-2.0)
            if n_neighbors == 1:
                value, index = squared.min(dim=1)
                value = value + (block * block).sum(dim=1)
            else:
                value, index = squared.topk(k=n_neighbors, largest=False, dim=1)
                value = value + (block * block).sum(dim=1, keepdim=True)
            distances.append(value.clamp_min_(0).sqrt_())
            indices.append(index)
        return torch.cat(distances), torch.cat(indices)

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
        """Build the memory bank from normal images, holding only one chunk of embeddings at a time.

        Embeddings are gathered in chunks of about ``CHUNK_PATCHES`` patches; each full chunk is reduced
        at once by greedy k-center to ``MERGE_FACTOR`` times the sampling ratio, and the union of those
        picks is reduced to the final size by one more greedy pass (merge and reduce). Peak memory thus
        follows the coreset size, not the number of training images.

        Args:
            batches: Batches of normalised OK training images.
            total: Number of images (for progress).
            sampling_ratio: Share of patch embeddings kept by the coreset.
            seed: Seed of the coreset selection.
            logger: Progress logger.
        """
        self.eval()
        progress = Progress(logger, "feature extraction", total)
        buffer: list[torch.Tensor] = []
        buffered = seen = 0
        picks: list[torch.Tensor] = []
        for images in batches:
            embedding = self.embed(images)
            buffer.append(embedding)
            buffered += len(embedding)
            seen += len(embedding)
            progress.update(len(images))
            if buffered >= CHUNK_PATCHES:
                picks.append(_reduce(torch.cat(buffer), sampling_ratio * MERGE_FACTOR, seed + len(picks)))
                buffer, buffered = [], 0
        if buffer:
            chunk = torch.cat(buffer)
            picks.append(chunk if picks else _reduce(chunk, sampling_ratio, seed))
            buffer = []
        union = torch.cat(picks)
        del picks
        size = max(1, int(seen * sampling_ratio))
        logger.info(f"coreset: keeping {size} of {seen} patch embeddings ({union.shape[1]} dims)")
        if len(union) > size:
            union = union[k_center_greedy(union, size, seed=seed, logger=logger)]
        self.memory_bank = union.contiguous()


def _reduce(embedding: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """Keep the greedy k-center picks of one chunk."""
    size = max(1, min(len(embedding), int(len(embedding) * ratio)))
    return embedding[k_center_greedy(embedding, size, seed=seed)]
