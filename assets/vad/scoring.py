"""Scoring images with a trained model: loaders, raw and normalised scores, labels, heatmaps."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from alo.logs import Progress
from assets.vad.heatmaps import heatmap_name, render
from assets.vad.images import ImageDataset, read_image
from assets.vad.models import ModelSpec, predict
from assets.vad.thresholds import certainty, normalize


def loader(
    paths: Sequence[str],
    spec: ModelSpec,
    batch_size: int,
    augment: object | None = None,
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
    dataset = ImageDataset(paths, tuple(spec.input_size), spec.mean, spec.std, augment)  # type: ignore[arg-type]
    if batches is not None:
        return DataLoader(dataset, batch_sampler=[list(batch) for batch in batches], num_workers=0)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)


def score_images(
    model: torch.nn.Module,
    paths: Sequence[str],
    spec: ModelSpec,
    batch_size: int,
    logger: logging.Logger,
    what: str = "scoring",
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Score images batch by batch.

    Args:
        model: Trained model.
        paths: Image files.
        spec: Model spec.
        batch_size: Images per batch.
        logger: Progress logger.
        what: Progress label.

    Yields:
        (positions, raw scores, raw anomaly maps) per batch.
    """
    progress = Progress(logger, what, len(paths))
    for images, positions in loader(paths, spec, batch_size):
        scores, maps = predict(model, images)
        progress.update(len(images))
        yield positions.numpy(), scores, maps


class Scorer:
    """Turns raw scores into the product's scores: normalised score, label and certainty."""

    def __init__(self, scoring: dict[str, object], inference_threshold: float = 0.5) -> None:
        self.threshold = float(scoring["threshold"])  # type: ignore[arg-type]
        self.low = float(scoring["min"])  # type: ignore[arg-type]
        self.high = float(scoring["max"])  # type: ignore[arg-type]
        self.ok_name = str(scoring["ok_class"])
        self.ng_name = str(scoring["ng_name"])
        self.inference_threshold = inference_threshold

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Normalise raw scores or maps (the trained threshold becomes 0.5).

        Args:
            raw: Raw values.

        Returns:
            Values in [0, 1].
        """
        return normalize(raw, self.threshold, self.low, self.high)

    def columns(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """The output columns for raw scores.

        Args:
            raw: Raw image scores.

        Returns:
            ``anomaly_score``, ``raw_score``, ``pred_label``, ``certainty`` arrays.
        """
        score = self.normalize(raw).astype(np.float64)
        pred_ng = score >= self.inference_threshold
        return {
            "anomaly_score": score,
            "raw_score": np.asarray(raw, dtype=np.float64),
            "pred_label": np.where(pred_ng, self.ng_name, self.ok_name),
            "certainty": certainty(score),
        }

    def save_heatmap(self, image_path: str, raw_map: np.ndarray, label: str, pred: str, folder: Path) -> Path:
        """Write the heatmap picture of one image at its original resolution.

        Args:
            image_path: The original image.
            raw_map: Its raw anomaly map.
            label: True label (``unknown`` when none).
            pred: Predicted label.
            folder: Destination folder.

        Returns:
            The file written.
        """
        folder.mkdir(parents=True, exist_ok=True)
        picture = render(read_image(image_path), self.normalize(raw_map), self.inference_threshold)
        path = folder / heatmap_name(label, pred, image_path)
        picture.save(path)
        return path
