"""An image's global feature statistics, what the out-of-distribution check compares (torch).

The descriptor is computed from the feature maps the model's backbone gives anyway, so checking costs two
reductions per layer and no second pass: each scorer's :meth:`~vad.models.scorer.GraphScorer.features` hands
its maps to an open :func:`descriptor_tap`, and an exported graph returns the same descriptor as an extra output.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

_taps = threading.local()  # the open tap of this thread, if any (a scorer may be shared between threads)


def global_descriptor(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-channel spatial mean and standard deviation of each feature map, concatenated.

    Args:
        features: One (B, C, H, W) map per layer.

    Returns:
        (B, 2 * sum of C) float32 descriptors.
    """
    parts: list[torch.Tensor] = []
    for feature in features:
        values = feature.float()
        mean = values.mean(dim=(2, 3))
        spread = (values - mean[:, :, None, None]).pow(2).mean(dim=(2, 3)).sqrt()
        parts.extend((mean, spread))
    return torch.cat(parts, dim=1)


@contextmanager
def descriptor_tap() -> Iterator[list[torch.Tensor]]:
    """Collect the descriptor of every batch of feature maps :func:`tap` sees in this thread while open.

    Yields:
        The list the descriptors are appended to, in call order.
    """
    previous = getattr(_taps, "open", None)
    collected: list[torch.Tensor] = []
    _taps.open = collected
    try:
        yield collected
    finally:
        _taps.open = previous


def tap(features: Sequence[torch.Tensor]) -> None:
    """Hand a batch's feature maps to this thread's open tap (nothing when none is open).

    Args:
        features: One (B, C, H, W) map per layer.
    """
    if getattr(_taps, "open", None) is not None:
        tap_descriptor(global_descriptor(features))


def tap_descriptor(descriptor: torch.Tensor) -> None:
    """Hand a batch's descriptor, computed elsewhere (inside a graph), to this thread's open tap.

    Args:
        descriptor: (B, D) descriptors (:func:`global_descriptor` of the batch's feature maps).
    """
    collected = getattr(_taps, "open", None)
    if collected is not None:
        collected.append(descriptor)
