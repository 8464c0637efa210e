"""Fitting a trained model's out-of-distribution check on its OK images (at training, and when it is updated)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from vad.batches import InputSpec, loader
from vad.ood.check import OodCheck

FIT_IMAGES = 500  # OK training images described at most (evenly spaced): the check's cost stays bounded


def describe_files(
    describe: Callable[[torch.Tensor], np.ndarray], files: Sequence[str], spec: InputSpec, batch_size: int
) -> np.ndarray:
    """Descriptors of image files, batch by batch.

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


def fit_check(
    describe: Callable[[torch.Tensor], np.ndarray],
    train: Sequence[str],
    held_out: Sequence[str],
    spec: InputSpec,
    batch_size: int,
    seed: int,
) -> OodCheck | None:
    """Fit the check on OK training images, its threshold also set on held-out OK images.

    Args:
        describe: Normalised images -> descriptors.
        train: OK training image files (at most :data:`FIT_IMAGES`, evenly spaced, are described).
        held_out: OK validation image files.
        spec: The model's input size and normalisation.
        batch_size: Images per batch.
        seed: Seed of the fold assignment.

    Returns:
        The check, or None with too few images (see :data:`vad.ood.check.MIN_IMAGES`).
    """
    chosen = list(train)
    if len(chosen) > FIT_IMAGES:
        chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, FIT_IMAGES).round().astype(int)]
    fitted = describe_files(describe, chosen, spec, batch_size)
    valid = describe_files(describe, held_out, spec, batch_size) if held_out else None
    return OodCheck.fit(fitted, valid, seed)
