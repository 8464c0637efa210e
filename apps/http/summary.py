"""A batch of predictions as an ``inference_summary`` (the shape the pipeline's summary file has)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from alo.summary import build_summary
from vad.batch_summary import summarize
from vad.detector import Detector, Prediction
from vad.ood.verdict import REJECTED_LABEL


def batch_summary(detector: Detector, names: list[str], found: list[Prediction], version: str) -> dict[str, Any]:
    """The ``inference_summary`` of a batch of predictions, as the batch pipeline's output step writes it.

    The note counts the images out of distribution when the model has a check; with ``ood_action: reject``
    those are counted as ``rejected`` in the result, not as NG.

    Args:
        detector: The detector that scored them (its calibration names the classes).
        names: The images' names.
        found: Their predictions.
        version: The solution version.

    Returns:
        The summary.
    """
    table = pd.DataFrame(
        {
            "anomaly_score": [p.anomaly_score for p in found],
            "certainty": [p.certainty for p in found],
            "pred_label": [p.label for p in found],
        }
    )
    flags = np.array([p.is_anomalous for p in found])
    calibration = detector.calibration
    result, score, probability = summarize(table, flags, calibration.ok_name, calibration.ng_name)
    judged_ng = sum(p.is_anomalous and p.label != REJECTED_LABEL for p in found)  # a rejected image has no verdict
    note = (
        f"{detector.model_name}: {len(found)} image(s), {judged_ng} {calibration.ng_name} "
        f"at threshold {calibration.inference_threshold}"
    )
    if detector.has_ood_check:
        note += f", {sum(p.in_distribution is False for p in found)} out of distribution"
    file_path = names[0] if len(names) == 1 else f"{len(names)} uploaded images"
    return build_summary(
        result=result, score=score, probability=probability, note=note, file_path=file_path, version=version
    )
