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


def torch_scores(scorer: GraphScorer, spec: Any) -> Callable[[list[Image.Image]], tuple[np.ndarray, np.ndarray | None]]:
    """A function scoring a batch of pictures through the torch scorer, as the exported graphs are scored.

    Args:
        scorer: The torch scorer.
        spec: The model's spec (input size, normalisation).

    Returns:
        Pictures -> (raw scores, raw maps).
    """
    size = tuple(spec.input_size)

    def score(batch: list[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        return scorer.score(torch.stack([to_tensor(p, size, spec.mean, spec.std) for p in batch]), True)

    return score
