"""Model tensors from images and image files, in the spec's input size and normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vad.images import model_pixels, normalized, read_image


class InputSpec(Protocol):
    """What batching needs of a model's spec (:class:`vad.models.spec.ModelSpec` has it)."""

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        ...

    @property
    def mean(self) -> Sequence[float]:
        """Per-channel normalisation mean."""
        ...

    @property
    def std(self) -> Sequence[float]:
        """Per-channel normalisation standard deviation."""
        ...


def to_tensor(image: Image.Image, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Resize (antialiased) and normalise an RGB image into a CHW float tensor.

    Args:
        image: RGB image.
        size: (height, width).
        mean: Per-channel mean of the backbone's training data.
        std: Per-channel standard deviation.

    Returns:
        The tensor.
    """
    return torch.from_numpy(normalized(model_pixels(image, size), mean, std))


class ImageDataset(Dataset):
    """Images as model tensors, with an optional augmentation applied to the PIL image."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        augment: Callable[[Image.Image], Image.Image] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.size = size
        self.mean = mean
        self.std = std
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = read_image(self.paths[index])
        if self.augment is not None:
            image = self.augment(image)
        return to_tensor(image, self.size, self.mean, self.std), index


def loader(
    paths: Sequence[str],
    spec: InputSpec,
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
