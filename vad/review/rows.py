"""The scored images of a run's table (``output.csv``'s rows) as the review store takes them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from vad.review.entries import ScoredImage


def scored_images(
    predictions: pd.DataFrame, files: Sequence[str], labels: Sequence[object] | None
) -> list[ScoredImage]:
    """One :class:`ScoredImage` per row of a scored table, in its order.

    Args:
        predictions: The rows with ``anomaly_score``, ``raw_score``, ``pred_label``, ``certainty`` and, where the
            model has a check, ``ood_score`` and ``in_distribution``.
        files: The scored image files, one per row.
        labels: The rows' known labels (None, or an empty cell: unknown).

    Returns:
        The scored images.
    """
    columns = {name: predictions[name].tolist() for name in predictions.columns}
    count = len(predictions)
    missing: list[object] = [None] * count
    raw, certainty = columns.get("raw_score", missing), columns.get("certainty", missing)
    ood, inside = columns.get("ood_score", missing), columns.get("in_distribution", missing)
    known = list(labels) if labels is not None else missing
    return [
        ScoredImage(
            source=str(files[i]),
            anomaly_score=float(columns["anomaly_score"][i]),
            pred_label=str(columns["pred_label"][i]),
            raw_score=_number(raw[i]),
            certainty=_number(certainty[i]),
            ood_score=_number(ood[i]),
            in_distribution=None if _missing(inside[i]) else bool(inside[i]),
            label=None if _missing(known[i]) or str(known[i]) == "" else str(known[i]),
        )
        for i in range(count)
    ]


def _missing(value: object) -> bool:
    """Whether a cell is empty (None, NaN or pandas' NA)."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _number(value: object) -> float | None:
    """A cell as a float, or None where it is empty or not finite."""
    if _missing(value) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
