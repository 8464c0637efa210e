"""PatchCore's image descriptors for the supervised mode's head (:mod:`vad.supervision`), in torch.

An image's descriptor is each embedding channel's mean and spread (standard deviation) over the patch grid:
what the model sees of the whole image, beside the farthest patch its score comes from. The exported
runtime computes the same in numpy (:mod:`.tail`).
"""

from __future__ import annotations

import torch


def embedding_descriptors(embedding: torch.Tensor) -> torch.Tensor:
    """Descriptors of a batch of patch embeddings.

    Args:
        embedding: (B, h, w, D) patch embeddings.

    Returns:
        (B, 2 * D): the channel means, then the channel standard deviations (population form).
    """
    flat = embedding.flatten(1, 2).float()
    return torch.cat([flat.mean(dim=1), flat.std(dim=1, correction=0)], dim=1)


def head_offsets(embedding: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The head's score offsets of a batch.

    Args:
        embedding: (B, h, w, D) patch embeddings.
        weights: (2 * D,) head weights.
        bias: (1,) head bias.

    Returns:
        (B,) offsets.
    """
    return embedding_descriptors(embedding) @ weights.float() + bias.float()
