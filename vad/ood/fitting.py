"""The descriptors an out-of-distribution check is fitted on, at training and when a model is updated."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from vad.batches import InputSpec, loader

FIT_IMAGES = 500  # training descriptors a check is fitted on at most (evenly spaced): its cost and file stay small


def evenly_spaced(count: int, limit: int = FIT_IMAGES) -> np.ndarray:
    """Positions of at most ``limit`` of ``count`` items, evenly spaced (all of them when fewer).

    Args:
        count: How many items there are.
        limit: The most positions kept.

    Returns:
        The positions, ascending.
    """
    if count <= limit:
        return np.arange(count)
    return np.linspace(0, count - 1, limit).round().astype(int)


def capped(descriptors: np.ndarray, limit: int = FIT_IMAGES) -> np.ndarray:
    """At most ``limit`` rows, evenly spaced (:func:`evenly_spaced`).

    Args:
        descriptors: (N, D).
        limit: The most rows kept.

    Returns:
        (min(N, limit), D).
    """
    return descriptors[evenly_spaced(len(descriptors), limit)]


def describe_files(
    describe: Callable[[torch.Tensor], np.ndarray], files: Sequence[str], spec: InputSpec, batch_size: int
) -> np.ndarray:
    """Descriptors of image files, batch by batch (where no fit or scoring pass gave them).

    Args:
        describe: Normalised images (B, 3, H, W) -> (B, D) descriptors (a model's ``describe``).
        files: Image files.
        spec: The model's input size and normalisation.
        batch_size: Images per batch.

    Returns:
        (N, D) descriptors (N = 0: an empty (0, 0) array).
    """
    parts = [describe(images) for images, _ in loader(list(files), spec, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
