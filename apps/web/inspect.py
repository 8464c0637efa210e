"""The Inspect page's results: each image's verdict and its upright original and heatmap overlay as PNGs.

Pictures are kept in memory for the page to load by key, bounded in count and bytes (the oldest go first):
the service never writes uploads to disk.
"""

from __future__ import annotations

import csv
import secrets
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from apps.http.schemas import json_number
from vad.detector import Prediction
from vad.ood.verdict import REJECTED_LABEL
from vad.png import encode_png

MAX_PICTURES = 256
MAX_PICTURE_BYTES = 512 * 1024 * 1024


class PictureStore:
    """PNG pictures by key, least recently stored dropped first."""

    def __init__(self, max_items: int = MAX_PICTURES, max_bytes: int = MAX_PICTURE_BYTES) -> None:
        """Set the bounds.

        Args:
            max_items: Most pictures kept.
            max_bytes: Most bytes kept.
        """
        self.items: OrderedDict[str, bytes] = OrderedDict()
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.bytes = 0
        self.lock = threading.Lock()

    def put(self, data: bytes) -> str:
        """Keep a picture.

        Args:
            data: PNG bytes.

        Returns:
            Its key (random, unguessable).
        """
        key = secrets.token_urlsafe(16)
        with self.lock:
            self.items[key] = data
            self.bytes += len(data)
            while self.items and (len(self.items) > self.max_items or self.bytes > self.max_bytes):
                _, dropped = self.items.popitem(last=False)
                self.bytes -= len(dropped)
        return key

    def get(self, key: str) -> bytes | None:
        """A kept picture, or None when it was dropped or never kept."""
        with self.lock:
            return self.items.get(key)


def overlay_panel(heatmap: Image.Image) -> Image.Image:
    """The middle panel (original with the coloured map over it) of a three-panel heatmap picture."""
    width = heatmap.width // 3
    return heatmap.crop((width, 0, 2 * width, heatmap.height))


def inspected(name: str, image: Image.Image, prediction: Prediction, store: PictureStore) -> dict[str, Any]:
    """One image's result for the page, its pictures kept in the store.

    Args:
        name: The file name as uploaded (shown as text only).
        image: The decoded upright RGB image (EXIF orientation applied).
        prediction: Its prediction, with the heatmap picture.
        store: Where the pictures go.

    Returns:
        JSON for the page: the verdict and scores, ``in_distribution`` (False: the page warns that the image is
        not the kind the model was trained on; None: the model has no check), ``rejected`` (the verdict was
        withheld, ``ood_action: reject``) and the pictures' URLs.
    """
    original = store.put(encode_png(np.asarray(image.convert("RGB"))))
    overlay = None
    if prediction.heatmap is not None:
        overlay = store.put(encode_png(np.asarray(overlay_panel(prediction.heatmap))))
    return {
        "name": name,
        "label": prediction.label,
        "is_anomalous": prediction.is_anomalous,
        "anomaly_score": prediction.anomaly_score,
        "raw_score": prediction.raw_score,
        "certainty": prediction.certainty,
        "ood_score": json_number(prediction.ood_score),
        "in_distribution": prediction.in_distribution,
        "rejected": prediction.label == REJECTED_LABEL,
        "width": image.width,
        "height": image.height,
        "original": f"/ui/api/picture/{original}",
        "heatmap": f"/ui/api/picture/{overlay}" if overlay else None,
    }


def validation_scores(train_folder: Path | None, ok_name: str) -> dict[str, list[float]]:
    """The normalised validation scores of a train run, OK and NG apart (for the score histogram).

    Args:
        train_folder: The train run's artifacts folder (None: unknown).
        ok_name: The OK class name.

    Returns:
        ``{"ok": [...], "ng": [...]}`` (empty lists when the run or its ``output.csv`` is missing).
    """
    scores: dict[str, list[float]] = {"ok": [], "ng": []}
    if train_folder is None:
        return scores
    try:
        with (train_folder / "output" / "output.csv").open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                try:
                    value = float(row.get("anomaly_score", ""))
                except ValueError:
                    continue
                if row.get("split", "valid") in ("valid", "") and row.get("label"):
                    scores["ok" if row["label"] == ok_name else "ng"].append(value)
    except (OSError, csv.Error, UnicodeDecodeError):
        return {"ok": [], "ng": []}
    return scores
