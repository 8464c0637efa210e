"""Binary image metrics (NG is the positive class) in numpy: what the reports need of scikit-learn, without it.

scikit-learn's import (with SciPy behind it) took 0.9-1.8 s of a 15 s training process on this machine, for a
handful of counts. These functions give scikit-learn's values (tested against it, ``tests/test_metrics.py``):
``zero_division=0`` semantics, AUROC by the trapezoid rule over the ROC curve (ties counted half).
"""

from __future__ import annotations

import numpy as np


def confusion(is_ng: np.ndarray, pred_ng: np.ndarray) -> tuple[int, int, int, int]:
    """The confusion counts.

    Args:
        is_ng: True labels (NG = True).
        pred_ng: Predictions (NG = True).

    Returns:
        (true OK predicted OK, true OK predicted NG, true NG predicted OK, true NG predicted NG).
    """
    truth, predicted = np.asarray(is_ng, dtype=bool), np.asarray(pred_ng, dtype=bool)
    tp = int((truth & predicted).sum())
    fp = int((~truth & predicted).sum())
    fn = int((truth & ~predicted).sum())
    return len(truth) - tp - fp - fn, fp, fn, tp


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of one class from its counts (0 where a denominator is 0).

    Args:
        tp: True positives.
        fp: False positives.
        fn: False negatives.

    Returns:
        (precision, recall, F1).
    """
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)


def auroc(is_ng: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, or NaN when only one class is present.

    Args:
        is_ng: True for NG images.
        scores: Scores (higher: more anomalous).

    Returns:
        The AUROC.
    """
    truth = np.asarray(is_ng, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(-values, kind="mergesort")
    ranked, hits = values[order], truth[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # one ROC point per distinct score
    tps = np.cumsum(hits)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, fps / negatives]
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values sharing the mean of their ranks (as ``scipy.stats.rankdata`` gives them).

    Args:
        values: A 1-D array of finite values (NaNs would rank as one tied value above all others).

    Returns:
        The ranks, float.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # the rank of each distinct value's last copy
    return ((upper - (counts - 1) / 2.0)[inverse]).astype(np.float64)


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rank correlation of two score arrays (NaN when either is constant or has fewer than 2 values).

    Args:
        first: Scores.
        second: Scores of the same items.

    Returns:
        The correlation of their average ranks.
    """
    a, b = average_ranks(first), average_ranks(second)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def classification_report(is_ng: np.ndarray, pred_ng: np.ndarray, ok_name: str, ng_name: str) -> dict:
    """Per-class precision, recall, F1 and support, accuracy, and their macro and weighted averages.

    Args:
        is_ng: True labels (NG = True).
        pred_ng: Predictions (NG = True).
        ok_name: Name of the OK class.
        ng_name: Name of the NG class.

    Returns:
        The report, shaped as scikit-learn's ``classification_report(..., output_dict=True)``.
    """
    tn, fp, fn, tp = confusion(is_ng, pred_ng)
    rows = {
        ok_name: (*precision_recall_f1(tn, fn, fp), tn + fp),  # OK as the positive class
        ng_name: (*precision_recall_f1(tp, fp, fn), tp + fn),
    }
    total = tn + fp + fn + tp
    report: dict = {
        name: {"precision": p, "recall": r, "f1-score": f, "support": float(s)} for name, (p, r, f, s) in rows.items()
    }
    report["accuracy"] = _ratio(tn + tp, total)
    values = np.array([row[:3] for row in rows.values()])
    supports = np.array([row[3] for row in rows.values()], dtype=np.float64)
    weights = supports / supports.sum() if supports.sum() else np.zeros_like(supports)
    for name, averaged in (("macro avg", values.mean(axis=0)), ("weighted avg", weights @ values)):
        report[name] = {
            "precision": float(averaged[0]),
            "recall": float(averaged[1]),
            "f1-score": float(averaged[2]),
            "support": float(total),
        }
    return report


def classification_scores(is_ng: np.ndarray, pred_ng: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Image-level accuracy, precision, recall, F1 (NG is the positive class) and AUROC.

    Args:
        is_ng: True labels (NG = True).
        pred_ng: Predictions (NG = True).
        scores: Scores for the AUROC.

    Returns:
        The metrics with the class counts.
    """
    tn, fp, fn, tp = confusion(is_ng, pred_ng)
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    total = tn + fp + fn + tp
    return {
        "accuracy": (tn + tp) / total if total else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": auroc(is_ng, scores),
        "n_ok": tn + fp,
        "n_ng": tp + fn,
    }
