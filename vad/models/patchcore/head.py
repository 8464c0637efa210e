"""PatchCore's image descriptors for the supervised mode's head (:mod:`vad.supervision`), in numpy (no torch).

An image's descriptor is each embedding channel's mean and spread (standard deviation) over the patch grid:
what the model sees of the whole image, beside the farthest patch its score comes from. The one definition:
the fit's descriptors, the model's, the torch scorer's and the exported runtime's head offsets all come from here.
"""

from __future__ import annotations

import numpy as np


def embedding_descriptors(embedding: np.ndarray) -> np.ndarray:
    """Descriptors of a batch of patch embeddings.

    Args:
        embedding: (B, h, w, D) or (B, P, D) patch embeddings.

    Returns:
        (B, 2 * D) float64: the channel means, then the channel standard deviations (population form).
    """
    patches = embedding.reshape(len(embedding), -1, embedding.shape[-1]).astype(np.float64)
    return np.concatenate([patches.mean(axis=1), patches.std(axis=1)], axis=1)


def head_offsets(embedding: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """The head's score offsets of a batch.

    Args:
        embedding: (B, h, w, D) or (B, P, D) patch embeddings.
        weights: (2 * D,) head weights.
        bias: The head's bias.

    Returns:
        (B,) offsets, float64.
    """
    return embedding_descriptors(embedding) @ weights.astype(np.float64) + bias
