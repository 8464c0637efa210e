"""What an out-of-distribution image becomes: the plan's ``ood_action`` applied to scored images (numpy only).

``flag`` (the default) keeps every verdict and marks the image: ``in_distribution`` is False. ``reject`` also
withholds the verdict: the image's ``pred_label`` becomes :data:`REJECTED_LABEL`, its certainty 0, and it counts
as anomalous, so that a part the model cannot judge is never passed as OK (it goes to a person). Both add the
``ood_score`` and ``in_distribution`` columns.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from vad.calibration import Scored

OodAction = Literal["flag", "reject"]
OOD_ACTIONS: tuple[OodAction, ...] = ("flag", "reject")
REJECTED_LABEL = "rejected"
OOD_COLUMNS = ("ood_score", "in_distribution")


def apply_ood(scored: Scored, ood_scores: np.ndarray | None, action: OodAction = "flag") -> Scored:
    """Add the out-of-distribution columns and, for ``reject``, withhold the verdict of images outside.

    Args:
        scored: The calibrated images.
        ood_scores: Their ``ood_score`` (distance over the check's threshold), or None where the model has no
            check (the columns are then left out).
        action: ``flag`` or ``reject``.

    Returns:
        The scored images.
    """
    if ood_scores is None:
        return scored
    ood = np.asarray(ood_scores, dtype=np.float64).reshape(-1)
    inside = ood < 1.0  # a NaN (a damaged image's features) is outside
    columns = {**scored.columns, "ood_score": ood, "in_distribution": inside}
    is_anomalous = scored.is_anomalous
    if action == "reject" and not inside.all():
        columns["pred_label"] = np.where(inside, scored.columns["pred_label"], REJECTED_LABEL)
        columns["certainty"] = np.where(inside, scored.columns["certainty"], 0.0)
        is_anomalous = is_anomalous | ~inside
    return Scored(columns, is_anomalous)
