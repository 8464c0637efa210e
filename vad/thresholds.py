"""Score maths: threshold sweep, F1 and percentile thresholds, certainty."""

from __future__ import annotations

import numpy as np
import pandas as pd

SWEEP_COLUMNS = ["threshold", "accuracy", "precision", "recall", "f1", "tp", "fp", "tn", "fn"]


def sweep(scores: np.ndarray, is_ng: np.ndarray) -> pd.DataFrame:
    """Tabulate classification metrics for every distinct decision threshold.

    Candidate thresholds lie midway between consecutive distinct scores, plus one below the
    lowest and one above the highest, so each row is a different split of the validation set and
    a chosen threshold keeps a margin on both sides. An image is NG when ``score >= threshold``.

    Args:
        scores: Raw anomaly scores of the validation images.
        is_ng: True where the image is NG.

    Returns:
        One row per threshold, columns ``threshold, accuracy, precision, recall, f1, tp, fp, tn, fn``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_ng = np.asarray(is_ng, dtype=bool)
    distinct = np.unique(scores)
    if distinct.size == 0:
        return pd.DataFrame(columns=SWEEP_COLUMNS)
    gap = float(distinct[-1] - distinct[0]) or max(abs(float(distinct[0])), 1.0)
    margin = gap * 0.01
    middles = (distinct[:-1] + distinct[1:]) / 2
    thresholds = np.concatenate([[distinct[0] - margin], middles, [distinct[-1] + margin]])
    ng_sorted = np.sort(scores[is_ng])
    ok_sorted = np.sort(scores[~is_ng])
    tp = ng_sorted.size - np.searchsorted(ng_sorted, thresholds, side="left")
    fp = ok_sorted.size - np.searchsorted(ok_sorted, thresholds, side="left")
    fn = ng_sorted.size - tp
    tn = ok_sorted.size - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    accuracy = (tp + tn) / scores.size
    return pd.DataFrame(
        {
            "threshold": thresholds,
            "accuracy": accuracy,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
        }
    )


def f1_threshold(table: pd.DataFrame) -> float:
    """Pick the threshold with the best F1 (ties: best accuracy, then the middle of the tied range).

    Args:
        table: Output of :func:`sweep`.

    Returns:
        The threshold.
    """
    best = table[np.isclose(table["f1"], table["f1"].max())]
    best = best[np.isclose(best["accuracy"], best["accuracy"].max())]
    return float(best["threshold"].iloc[len(best) // 2])


def percentile_threshold(ok_scores: np.ndarray, percentile: float) -> float:
    """Threshold at a percentile of the OK validation scores.

    Args:
        ok_scores: Raw scores of OK validation images.
        percentile: Fraction in (0, 1]: that share of OK images scores below the threshold.

    Returns:
        The threshold.
    """
    return float(np.quantile(np.asarray(ok_scores, dtype=np.float64), percentile))


def certainty(probability: np.ndarray | float) -> np.ndarray:
    """Certainty ``1 - H2(p)``: one minus the binary Shannon entropy (base 2) of ``p``.

    Args:
        probability: Normalised anomaly scores in [0, 1].

    Returns:
        Values in [0, 1]: 1 when p is 0 or 1, 0 when p is 0.5.
    """
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(p < 1, (1 - p) * np.log2(1 - p), 0.0))
    return 1.0 - entropy
