"""Batches of model tensors from image files, in the spec's input size and normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader

from assets.vad.images import ImageDataset
from assets.vad.models.spec import ModelSpec


def loader(
    paths: Sequence[str],
    spec: ModelSpec,
    batch_size: int,
    augment: Callable[[Image.Image], Image.Image] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    batches: Sequence[Sequence[int]] | None = None,
) -> DataLoader:
    """A loader of model tensors and row positions for image files.

    Args:
        paths: Image files.
        spec: Model spec (input size and normalisation).
        batch_size: Images per batch.
        augment: Optional augmentation.
        shuffle: Shuffle each epoch (seeded).
        seed: Shuffle seed.
        batches: Exactly these batches of positions, in this order (``batch_size`` and ``shuffle`` unused).

    Returns:
        The loader, yielding (images, positions).
    """
    dataset = ImageDataset(paths, spec.input_size, spec.mean, spec.std, augment)
    if batches is not None:
        return DataLoader(dataset, batch_sampler=[list(batch) for batch in batches], num_workers=0)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)
