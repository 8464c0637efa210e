"""The verdict of a batch of scored images in the ``inference_summary`` shape (result, score, probability)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alo.summary import MAX_RESULT
from vad.ood.verdict import REJECTED_LABEL


def summarize(
    predictions: pd.DataFrame, is_anomalous: np.ndarray, ok_name: str, ng_name: str
) -> tuple[str, float, dict[str, float]]:
    """Result, score and probability of the summary.

    One image: its predicted label, its certainty and {OK: 1-p, NG: p}. Several: counts per
    label (``good:12,bad:3``; ``OK:12,NG:3`` when the names do not fit 32 characters; with ``ood_action:
    reject``, ``,rejected:N`` for the images withheld), the mean certainty and the mean probabilities.

    Args:
        predictions: ``output.csv`` rows.
        is_anomalous: True where an image is predicted NG (the calibration's verdict).
        ok_name: OK class name.
        ng_name: NG name.

    Returns:
        (result, score, probability).
    """
    p = float(np.mean(predictions["anomaly_score"]))
    score = float(np.mean(predictions["certainty"]))
    probability = {ok_name: 1.0 - p, ng_name: p}
    if len(predictions) == 1:
        return str(predictions["pred_label"].iloc[0])[:MAX_RESULT], score, probability
    n_rejected = int(np.count_nonzero(predictions["pred_label"] == REJECTED_LABEL))
    n_ng = int(np.count_nonzero(is_anomalous)) - n_rejected  # a rejected image counts as anomalous, not as NG
    n_ok = len(predictions) - n_ng - n_rejected
    rejected = f",{REJECTED_LABEL}:{n_rejected}" if n_rejected else ""
    result = f"{ok_name}:{n_ok},{ng_name}:{n_ng}{rejected}"
    if len(result) > MAX_RESULT:
        result = f"OK:{n_ok},NG:{n_ng}" + (f",REJ:{n_rejected}" if n_rejected else "")
    return result, score, probability
