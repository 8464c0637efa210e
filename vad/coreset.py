"""Greedy k-center coreset selection for the PatchCore memory bank.

Same algorithm as anomalib's ``KCenterGreedy`` (random projection, then repeatedly take the
point farthest from the chosen centres), computed with one matrix-vector product per step on precomputed
squared norms instead of materialising ``features - centre`` each time.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from alo.logs import Progress


def k_center_greedy(
    embedding: torch.Tensor,
    size: int,
    seed: int = 0,
    projection_dim: int = 64,
    logger: logging.Logger | None = None,
) -> torch.Tensor:
    """Select ``size`` rows of ``embedding`` that cover it best (greedy k-center).

    Args:
        embedding: Patch embeddings, shape (N, D).
        size: Number of rows to keep (1 <= size <= N).
        seed: Seed of the projection and the first centre.
        projection_dim: Dimensions of the Gaussian random projection used for distances.
        logger: Where to report progress.

    Returns:
        The selected row indices (int64), in selection order.
    """
    count, dims = embedding.shape
    size = max(1, min(int(size), count))
    generator = torch.Generator().manual_seed(seed)
    if dims > projection_dim:
        projection = torch.randn(dims, projection_dim, generator=generator) / projection_dim**0.5
        features = (embedding.float() @ projection).numpy()
    else:
        features = embedding.float().numpy()
    # the loop in numpy: each step is a few small array operations, and numpy's are about twice as fast as torch's
    # here (0.18-0.26 against 0.52 s for 3,276 picks of 16,384 rows)
    features = np.ascontiguousarray(features)
    squared = np.einsum("ij,ij->i", features, features)
    min_distance = np.full(count, np.inf, dtype=np.float32)
    selected = np.empty(size, dtype=np.int64)
    index = int(torch.randint(count, (1,), generator=generator))
    progress = Progress(logger, "coreset selection", size) if logger else None
    distance = np.empty(count, dtype=np.float32)
    for step in range(size):
        selected[step] = index
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2, into one buffer
        np.dot(features, features[index], out=distance)
        distance *= -2.0
        distance += squared
        distance += squared[index]
        np.minimum(min_distance, distance, out=min_distance)
        min_distance[index] = -1.0
        index = int(min_distance.argmax())
        if progress and (step + 1) % 256 == 0:
            progress.update(256)
    if progress and progress.done < size:
        progress.update(size - progress.done)
    return torch.from_numpy(selected)
