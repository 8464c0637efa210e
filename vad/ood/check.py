"""The out-of-distribution check: is a scored image the kind of image the model was trained on?

It is not the anomaly score. A defect changes a few patches; a photo of another product, a moved camera or a
changed light changes the image's global feature statistics. Each image is described by the per-channel mean
and standard deviation of the model's own backbone feature maps (:mod:`vad.ood.descriptor`); the check holds
the centre and spread of those descriptors over the OK training images, and an image's distance is the
root-mean-square of its standardised descriptor. The threshold is set on distances the check did not fit:
five-fold out-of-fold distances of the training images and the OK validation images' distances; it is
``MARGIN`` times their 99th percentile. ``ood_score`` is the distance over the threshold: an image is out of
distribution when its ``ood_score`` reaches 1.

Why this form (chosen on the four synthetic products and the real-crack development cells, PatchCore's default
backbone, the same 1.5x margin for each): a full (Ledoit-Wolf) Mahalanobis distance on the same descriptors is
itself a defect detector (it flagged 10-22% of the synthetic NG test images and 43% of the cracked cells), a
nearest-neighbour distance flagged 35% of the cracked cells, and medians over a 4 x 4 grid of regions (meant to
ignore local defects) flagged 3%; this diagonal form flagged no OK test image, no synthetic NG image and 2% of
the cracked cells, while every image of another product lay beyond 1.6 times the threshold.

The check is numpy only (no torch), saved beside the model as ``ood_check.json`` and run by every runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OOD_FILE = "ood_check.json"
DESCRIPTORS_FILE = "ood_descriptors.npy"  # the training descriptors it was fitted on: an update adds to them
FORMAT = 1
MARGIN = 1.5  # threshold = MARGIN x the 99th percentile of held-out OK distances
QUANTILE = 0.99
FOLDS = 5
MIN_IMAGES = 5  # fewer OK training images than this: no check (the spread cannot be estimated)
SCALE_FLOOR = 0.01  # a channel's spread is at least this share of the mean spread (dead channels)


def _distances(descriptors: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Root-mean-square standardised distance of each descriptor (N, D) to a centre."""
    standardised = (np.asarray(descriptors, dtype=np.float64) - center) / scale
    return np.sqrt(np.mean(standardised * standardised, axis=1))


def _center_and_scale(descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(descriptors, dtype=np.float64)
    spread = values.std(axis=0)
    return values.mean(axis=0), spread + SCALE_FLOOR * float(spread.mean() or 1.0)


def _out_of_fold(descriptors: np.ndarray, seed: int) -> np.ndarray:
    """Each training descriptor's distance to the centre and spread of the folds that did not hold it."""
    order = np.random.default_rng(seed).permutation(len(descriptors))
    distances = np.empty(len(descriptors))
    for fold in np.array_split(order, min(FOLDS, len(descriptors))):
        rest = np.setdiff1d(order, fold)
        distances[fold] = _distances(descriptors[fold], *_center_and_scale(descriptors[rest]))
    return distances


@dataclass(frozen=True)
class OodCheck:
    """Centre, spread and threshold of the OK training images' descriptors.

    Attributes:
        center: Mean descriptor (D,).
        scale: Per-dimension spread (D,), floored.
        threshold: The distance from which an image is out of distribution.
        images: How many OK images it was fitted on (training) and its threshold set on (held out).
        descriptors: The training descriptors it was fitted on (float32), or None where not kept.
    """

    center: np.ndarray
    scale: np.ndarray
    threshold: float
    images: dict[str, int]
    descriptors: np.ndarray | None = None

    @classmethod
    def fit(cls, train: np.ndarray, held_out: np.ndarray | None = None, seed: int = 0) -> OodCheck | None:
        """Fit the check on the OK training images' descriptors.

        Args:
            train: (N, D) descriptors of the OK training images.
            held_out: (M, D) descriptors of OK images the check is not fitted on (validation), or None.
            seed: Seed of the fold assignment.

        Returns:
            The check, or None with fewer than :data:`MIN_IMAGES` training images.
        """
        train = np.asarray(train, dtype=np.float64)
        if len(train) < MIN_IMAGES:
            return None
        center, scale = _center_and_scale(train)
        distances = [_out_of_fold(train, seed)]
        if held_out is not None and len(held_out):
            distances.append(_distances(held_out, center, scale))
        pooled = np.concatenate(distances)
        threshold = MARGIN * float(np.quantile(pooled, QUANTILE))
        counts = {"train": len(train), "held_out": len(pooled)}
        kept = train.astype(np.float32)
        return cls(center, scale, max(threshold, float(np.finfo(np.float32).tiny)), counts, kept)

    def scores(self, descriptors: np.ndarray) -> np.ndarray:
        """``ood_score`` of images: the distance over the threshold (out of distribution from 1).

        Args:
            descriptors: (B, D) descriptors.

        Returns:
            (B,) float32 scores; NaN descriptors give NaN.
        """
        descriptors = np.asarray(descriptors)
        if descriptors.ndim != 2 or descriptors.shape[1] != len(self.center):
            msg = f"the OOD check holds {len(self.center)}-value descriptors, got shape {descriptors.shape}"
            raise ValueError(msg)
        return (_distances(descriptors, self.center, self.scale) / self.threshold).astype(np.float32)

    def save(self, folder: Path) -> Path:
        """Write ``ood_check.json`` into a model folder.

        Args:
            folder: ``models/train``.

        Returns:
            The file.
        """
        values = {
            "format": FORMAT,
            "threshold": self.threshold,
            "margin": MARGIN,
            "quantile": QUANTILE,
            "images": self.images,
            "center": [float(v) for v in self.center],
            "scale": [float(v) for v in self.scale],
        }
        path = folder / OOD_FILE
        path.write_text(json.dumps(values) + "\n", encoding="utf-8")
        if self.descriptors is not None:
            np.save(folder / DESCRIPTORS_FILE, self.descriptors.astype(np.float32), allow_pickle=False)
        return path

    @classmethod
    def load(cls, folder: Path) -> OodCheck | None:
        """Read the check of a model folder.

        Args:
            folder: ``models/train``.

        Returns:
            The check, or None where the model has none (trained before checks existed, or on too few images).

        Raises:
            ValueError: The file is damaged.
        """
        path = folder / OOD_FILE
        if not path.is_file():
            return None
        values = json.loads(path.read_text(encoding="utf-8"))
        if values.get("format") != FORMAT:
            msg = f"{OOD_FILE} has format {values.get('format')!r}, this release reads {FORMAT}"
            raise ValueError(msg)
        center = np.asarray(values["center"], dtype=np.float64)
        scale = np.asarray(values["scale"], dtype=np.float64)
        threshold = float(values["threshold"])
        if center.shape != scale.shape or center.ndim != 1 or not (scale > 0).all() or not threshold > 0:
            msg = f"{OOD_FILE} holds inconsistent values (centre {center.shape}, scale {scale.shape})"
            raise ValueError(msg)
        descriptors = None
        if (folder / DESCRIPTORS_FILE).is_file():
            descriptors = np.load(folder / DESCRIPTORS_FILE, allow_pickle=False)
            if descriptors.ndim != 2 or descriptors.shape[1] != len(center):
                msg = f"{DESCRIPTORS_FILE} holds {descriptors.shape} descriptors, {OOD_FILE} {len(center)} values each"
                raise ValueError(msg)
        return cls(center, scale, threshold, dict(values.get("images", {})), descriptors)
