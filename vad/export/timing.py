"""Scoring a list of pictures through torch or an exported graph, timed: images/s in batches, one-image ms."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from vad.batches import to_tensor
from vad.models.scorer import GraphScorer

BATCH = 4
LATENCY_REPEATS = 5  # one-image timings (after one warm-up call); their median is reported


def score_batches(
    score: Callable[[list[Image.Image]], tuple[np.ndarray, np.ndarray | None]], pictures: Sequence[Image.Image]
) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Scores and per-batch maps of pictures in batches of :data:`BATCH`, and images/s."""
    scores, maps = [], []
    started = time.perf_counter()
    for start in range(0, len(pictures), BATCH):
        found, found_maps = score(list(pictures[start : start + BATCH]))
        if found_maps is None:
            msg = "a scorer gave no maps: the gates compare maps too"
            raise ValueError(msg)
        scores.append(np.asarray(found, dtype=np.float32))
        maps.append(found_maps)
    seconds = max(time.perf_counter() - started, 1e-9)
    return np.concatenate(scores), maps, round(len(pictures) / seconds, 2)


def one_image_ms(score: Callable[[list[Image.Image]], Any], picture: Image.Image) -> float:
    """Median milliseconds to score one picture with its map (after one warm-up call)."""
    score([picture])
    timings = []
    for _ in range(LATENCY_REPEATS):
        started = time.perf_counter()
        score([picture])
        timings.append(time.perf_counter() - started)
    return round(1000 * statistics.median(timings), 2)


def torch_scores(scorer: GraphScorer, spec: Any, described: bool = False) -> Callable[[list[Image.Image]], Any]:
    """A function scoring a batch of pictures through the torch scorer, as the exported graphs are scored.

    Args:
        scorer: The torch scorer.
        spec: The model's spec (input size, normalisation).
        described: Return the out-of-distribution descriptors too (a third value).

    Returns:
        Pictures -> (raw scores, raw maps), or (raw scores, raw maps, descriptors).
    """
    size = tuple(spec.input_size)

    def score(batch: list[Image.Image]) -> Any:
        images = torch.stack([to_tensor(p, size, spec.mean, spec.std) for p in batch])
        return scorer.score_described(images, True) if described else scorer.score(images, True)

    return score


class Described:
    """A scoring function that also gives descriptors, called as :func:`score_batches` calls one; keeps them.

    Args:
        score: Pictures -> (scores, maps, descriptors or None).
    """

    def __init__(self, score: Callable[[list[Image.Image]], tuple[np.ndarray, np.ndarray | None, Any]]) -> None:
        self.score = score
        self.kept: list[np.ndarray] = []

    def __call__(self, batch: list[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        """Score a batch, keeping its descriptors.

        Args:
            batch: Pictures.

        Returns:
            Scores and maps.
        """
        scores, maps, descriptors = self.score(batch)
        if descriptors is not None:
            self.kept.append(descriptors)
        return scores, maps

    def descriptors(self) -> np.ndarray:
        """The descriptors kept so far, in call order.

        Returns:
            (N, D); empty (0, 0) when no call gave any.
        """
        return np.concatenate(self.kept) if self.kept else np.zeros((0, 0), dtype=np.float32)
