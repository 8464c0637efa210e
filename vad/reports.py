"""Validation reports: scores table, confusion matrix, classification report, threshold sweep plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from vad import metrics
from vad.sweep_plot import draw_sweep


def write_validation_reports(
    folder: Path,
    is_ng: np.ndarray,
    pred_ng: np.ndarray,
    scores: np.ndarray,
    ok_name: str,
    ng_name: str,
    threshold: float,
    extra: dict[str, float] | None = None,
) -> dict[str, float]:
    """Write ``validation_score.csv``, ``validation_confusion_matrix.csv`` and the classification report.

    Args:
        folder: The ``output`` folder.
        is_ng: True labels (NG = True).
        pred_ng: Predictions (NG = True).
        scores: Raw scores (for AUROC: normalised ones are clipped, which can tie images).
        ok_name: Name of the OK class.
        ng_name: Name shown for NG.
        threshold: The raw threshold used.
        extra: More metrics for the score table (pixel metrics).

    Returns:
        The scores written.
    """
    found = {**metrics.classification_scores(is_ng, pred_ng, scores), "threshold": float(threshold), **(extra or {})}
    pd.DataFrame([found]).to_csv(folder / "validation_score.csv", index=False)
    tn, fp, fn, tp = metrics.confusion(is_ng, pred_ng)
    matrix = np.array([[tn, fp], [fn, tp]])
    names = [ok_name, ng_name]
    pd.DataFrame(matrix, index=[f"true_{n}" for n in names], columns=[f"pred_{n}" for n in names]).to_csv(
        folder / "validation_confusion_matrix.csv", index_label="label"
    )
    report = metrics.classification_report(is_ng, pred_ng, ok_name, ng_name)
    (folder / "validation_classification_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return found


def plot_sweep(table: pd.DataFrame, chosen: float, path: Path, title: str) -> Path:
    """Plot accuracy, precision, recall and F1 against the threshold and mark the chosen one.

    Args:
        table: The sweep table.
        chosen: The trained threshold.
        path: PNG to write.
        title: Plot title.

    Returns:
        The path written.
    """
    columns = {name: table[name].to_numpy() for name in ("accuracy", "precision", "recall", "f1") if name in table}
    return draw_sweep(table["threshold"].to_numpy(), columns, chosen, path, title)
