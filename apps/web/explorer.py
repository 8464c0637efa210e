"""The threshold explorer: a train run's validation sweep, and a plan copy deciding at a chosen threshold.

The sweep (``extra_output/train/threshold_test_result.csv``) has one row per split of the validation images
(``raw >= threshold`` is NG). A chosen row's raw threshold goes into the plan as ``inference_threshold``
through the model's own normalisation (:meth:`Calibration.normalize`, float32, as inference computes the
scores it compares), so inference on the validation images gives that row's counts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from apps.web.runs import RunInfo, output_rows
from vad.calibration import CALIBRATION_FILE, Calibration
from vad.plan_edit import Change, PlanCopy, write_copy

SWEEP_FILE = Path("extra_output/train/threshold_test_result.csv")


def _calibration(run: RunInfo) -> Calibration | None:
    try:
        values = json.loads((run.folder / "models" / "train" / CALIBRATION_FILE).read_text(encoding="utf-8"))
        return Calibration.from_dict(values)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def normalized_threshold(calibration: Calibration, raw: float) -> float | None:
    """The ``inference_threshold`` that decides at a raw threshold, or None when it falls outside [0, 1].

    Args:
        calibration: The model's calibration.
        raw: A raw score threshold.

    Returns:
        The normalised value (float32 maths, as scored), or None where normalisation would clip it.
    """
    value = float(calibration.unclipped(raw))
    return value if 0.0 <= value <= 1.0 else None


def sweep_view(run: RunInfo) -> dict[str, Any] | None:
    """What the explorer shows for a train run, or None when the run has no sweep or calibration.

    Args:
        run: A train run.

    Returns:
        ``rows`` (the sweep, each with its ``inference_threshold`` or None), ``trained`` (the index of the row
        nearest the trained threshold), ``images`` (validation rows: name, label, is_ng, raw score, heatmap),
        and the calibration's names and threshold.
    """
    calibration = _calibration(run)
    if calibration is None:
        return None
    try:
        with (run.folder / SWEEP_FILE).open(encoding="utf-8", newline="") as handle:
            table = list(csv.DictReader(handle))
    except (OSError, csv.Error):
        return None
    rows, thresholds = [], []
    for entry in table:
        try:
            values = {key: float(entry[key]) for key in ("threshold", "precision", "recall", "f1", "accuracy")}
            counts = {key: int(float(entry[key])) for key in ("tp", "fp", "tn", "fn")}
        except (KeyError, ValueError):
            return None
        rows.append({**values, **counts, "inference_threshold": normalized_threshold(calibration, values["threshold"])})
        thresholds.append(values["threshold"])
    if not rows:
        return None
    trained = int(np.argmin([abs(threshold - calibration.threshold) for threshold in thresholds]))
    images = []
    for row in output_rows(run):
        try:
            raw = float(row["raw_score"])
        except (KeyError, ValueError):
            continue
        label = row.get("label", "")
        images.append(
            {
                "image": row.get("image_path", ""),
                "label": label,
                "is_ng": bool(label) and label != calibration.ok_name,
                "raw_score": raw,
                "heatmap": row.get("heatmap", ""),
            }
        )
    return {
        "rows": rows,
        "trained": trained,
        "trained_threshold": calibration.threshold,
        "ok_name": calibration.ok_name,
        "ng_name": calibration.ng_name,
        "images": images,
    }


def use_threshold(plan_path: Path, run: RunInfo, row: int) -> tuple[PlanCopy, float]:
    """Write a plan copy whose ``inference_threshold`` decides at sweep row ``row``'s raw threshold.

    Args:
        plan_path: The user's plan.
        run: The train run of the plan's model.
        row: The sweep row index.

    Returns:
        The plan copy and the ``inference_threshold`` written.

    Raises:
        ValueError: No such row, or its threshold normalises outside [0, 1].
    """
    view = sweep_view(run)
    if view is None or not 0 <= row < len(view["rows"]):
        msg = "no such sweep row: reload the page"
        raise ValueError(msg)
    value = view["rows"][row]["inference_threshold"]
    if value is None:
        msg = "this threshold lies outside the model's normalised range [0, 1]; choose one between the scores"
        raise ValueError(msg)
    return write_copy(plan_path, [Change(("inference", "inference", "inference_threshold"), value)], "threshold"), value
