"""Calibration: the trained threshold, the normalisation bounds and the OK/NG names, in one immutable object.

It plays anomalib's post-processor role. Built once from the validation scores, saved beside the
model (``calibration.json``), it turns raw image scores into the output columns and one boolean
is-anomalous array: nothing downstream compares label strings or hard-codes 0.5 to decide NG.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vad import threshold_policy
from vad.threshold_policy import MethodName
from vad.thresholds import certainty, sweep

CALIBRATION_FILE = "calibration.json"
DEFAULT_INFERENCE_THRESHOLD = 0.5  # the normalised score the trained threshold maps to


@dataclass(frozen=True)
class Scored:
    """Raw image scores turned into the product's output.

    Attributes:
        columns: ``anomaly_score``, ``raw_score``, ``pred_label``, ``certainty`` (one value per image).
        is_anomalous: True where the image is predicted NG.
    """

    columns: dict[str, np.ndarray]
    is_anomalous: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """Threshold and min-max bounds of the raw scores, and the names of the two classes.

    Attributes:
        threshold: The raw score from which an image is NG (it normalises to 0.5).
        low: Lowest raw validation score.
        high: Highest raw validation score.
        ok_name: Label of normal images.
        ng_name: Label given to anomalous images (the NG label when there is one, else ``NG``).
        method: How the threshold was chosen (``F1`` or ``Percentile``).
        percentile: The Percentile method's share of OK validation scores below the threshold.
        inference_threshold: Normalised score from which an image is NG (0.5: the trained threshold).
    """

    threshold: float
    low: float
    high: float
    ok_name: str
    ng_name: str
    method: MethodName = "F1"
    percentile: float = 0.8
    inference_threshold: float = field(default=DEFAULT_INFERENCE_THRESHOLD, compare=False)

    def __post_init__(self) -> None:
        if self.ok_name == self.ng_name:
            msg = f"the OK and NG names must differ, both are {self.ok_name!r}"
            raise ValueError(msg)
        if not all(np.isfinite([self.threshold, self.low, self.high])):
            msg = f"calibration values must be finite: threshold {self.threshold}, bounds {self.low}..{self.high}"
            raise ValueError(msg)

    @classmethod
    def fit(
        cls,
        raw: np.ndarray,
        is_ng: np.ndarray,
        method: MethodName,
        percentile: float,
        ok_name: str,
        ng_name: str,
    ) -> tuple[Calibration, pd.DataFrame]:
        """Calibrate on validation scores.

        Args:
            raw: Raw validation image scores.
            is_ng: True where the validation image is NG.
            method: A threshold method's name (:mod:`vad.threshold_policy`: ``F1``, ``Percentile``).
            percentile: Share of OK scores below the threshold, for ``Percentile``.
            ok_name: OK class name.
            ng_name: NG name.

        Returns:
            The calibration and the threshold sweep table it was chosen from.
        """
        raw = np.asarray(raw, dtype=np.float64)
        is_ng = np.asarray(is_ng, dtype=bool)
        table = sweep(raw, is_ng)
        threshold = threshold_policy.method(method).threshold(raw, is_ng, table, percentile)
        calibration = cls(
            threshold=float(threshold),
            low=float(raw.min()),
            high=float(raw.max()),
            ok_name=str(ok_name),
            ng_name=str(ng_name),
            method=method,
            percentile=float(percentile),
        )
        return calibration, table

    def with_inference_threshold(self, value: float) -> Calibration:
        """The same calibration deciding NG at another normalised score.

        Args:
            value: Normalised score in [0, 1] from which an image is NG.

        Returns:
            A new calibration.
        """
        return Calibration(**{**asdict(self), "inference_threshold": float(value)})

    def normalize(self, raw: np.ndarray | float) -> np.ndarray:
        """Min-max normalise raw scores or maps so that the threshold maps to 0.5, clipped to [0, 1].

        anomalib's formula (``PostProcessor._normalize``; equality tested): ``(raw - threshold) /
        (high - low) + 0.5``, in float32.

        Args:
            raw: Raw scores or anomaly-map values.

        Returns:
            Normalised values as float32.
        """
        return np.clip(self.unclipped(raw), 0.0, 1.0).astype(np.float32, copy=False)

    def unclipped(self, raw: np.ndarray | float) -> np.ndarray:
        """:meth:`normalize` before its clipping to [0, 1] (the threshold explorer asks where a value falls).

        Args:
            raw: Raw scores or anomaly-map values.

        Returns:
            Normalised values as float32, not clipped.
        """
        values = np.asarray(raw, dtype=np.float32)
        span = np.float32(self.high) - np.float32(self.low)
        return (values - np.float32(self.threshold)) / span + np.float32(0.5)

    def apply(self, raw: np.ndarray) -> Scored:
        """Output columns and the is-anomalous array for raw image scores.

        Args:
            raw: Raw image scores.

        Returns:
            The scored images.
        """
        score = self.normalize(raw).astype(np.float64)
        is_anomalous = score >= self.inference_threshold
        columns = {
            "anomaly_score": score,
            "raw_score": np.asarray(raw, dtype=np.float64).reshape(-1),
            "pred_label": np.where(is_anomalous, self.ng_name, self.ok_name),
            "certainty": certainty(score),
        }
        return Scored(columns, is_anomalous)

    def to_dict(self) -> dict[str, object]:
        """The values saved in ``calibration.json`` (the inference threshold is a run setting, not saved).

        Returns:
            A JSON-ready dict.
        """
        values = asdict(self)
        values.pop("inference_threshold")
        return values

    def save(self, folder: Path, name: str = CALIBRATION_FILE) -> Path:
        """Write ``calibration.json`` (or another name) into a model folder.

        Args:
            folder: ``models/train`` (or ``models/export`` for an int8 graph's own calibration).
            name: The file name.

        Returns:
            The file written.
        """
        path = folder / name
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        """Read the values :meth:`to_dict` gave.

        Args:
            values: The saved values.

        Returns:
            The calibration.
        """
        return cls(
            threshold=float(values["threshold"]),
            low=float(values["low"]),
            high=float(values["high"]),
            ok_name=str(values["ok_name"]),
            ng_name=str(values["ng_name"]),
            method=str(values.get("method", "F1")),
            percentile=float(values.get("percentile", 0.8)),
        )
