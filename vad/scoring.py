"""Raw scoring of image files batch by batch (the detector and validation both go through it)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from alo.logs import Progress
from vad.batches import loader
from vad.models.base import VadModel


def score_files(
    model: VadModel,
    paths: Sequence[str],
    batch_size: int,
    logger: logging.Logger,
    what: str = "scoring",
    maps: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Score image files batch by batch, in file order.

    Args:
        model: A trained model.
        paths: Image files.
        batch_size: Images per batch.
        logger: Progress logger.
        what: Progress label.
        maps: Compute the anomaly maps (else None: cheaper for some models).

    Yields:
        (positions, raw scores, raw anomaly maps or None) per batch.
    """
    progress = Progress(logger, what, len(paths))
    for images, positions in loader(paths, model.spec, batch_size):
        scores, found = model.score(images, maps)
        progress.update(len(images))
        yield positions.numpy(), scores, found
