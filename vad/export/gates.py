"""The gates an exported graph must pass before it is kept: fp32 parity with torch, the int8 accuracy gate.

**fp32 parity** (``onnx``, ``openvino``): the validation images scored through torch and through the exported graph;
the normalised scores (``anomaly_score``) of every image within :data:`MAX_NORMALIZED_DIFFERENCE` and every OK/NG
label the same. **int8**: its own calibration from its validation scores, kept when validation image AUROC drops by
at most :data:`MAX_AUROC_DROP` and F1 at the trained threshold by at most :data:`MAX_F1_DROP`; how closely its
scores follow the fp32 ones (:func:`fidelity`, label-free) is reported beside.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vad import metrics
from vad.calibration import Calibration

MAX_NORMALIZED_DIFFERENCE = 1e-3  # the fp32 gate: normalised scores of every validation image within this
MAX_AUROC_DROP = 0.005  # the int8 gate: validation image AUROC may drop by this much
MAX_F1_DROP = 0.01  # and F1 at the trained threshold by this much
DROP_TOLERANCE = 1e-9  # float rounding: one swapped pair of 20 OK x 10 NG is a drop of 0.005, within the limit


def parity(
    reference: tuple[np.ndarray, list[np.ndarray]],
    exported: tuple[np.ndarray, list[np.ndarray]],
    calibration: Calibration,
) -> dict[str, Any]:
    """Compare torch's scores and maps with an fp32 export's (the gate's figures).

    Args:
        reference: Torch's raw scores and per-batch raw maps.
        exported: The export's, of the same images.
        calibration: The model's calibration.

    Returns:
        The figures, with ``accepted`` and, when refused, ``reason``.
    """
    raw, exported_raw = reference[0], exported[0]
    map_difference = max(
        float(np.max(np.abs(calibration.normalize(a) - calibration.normalize(b))))
        for a, b in zip(reference[1], exported[1], strict=True)
    )
    span = max(calibration.high - calibration.low, 1e-12)
    scored, exported_scored = calibration.apply(raw), calibration.apply(exported_raw)
    normalized = float(np.max(np.abs(scored.columns["anomaly_score"] - exported_scored.columns["anomaly_score"])))
    same_labels = bool(np.array_equal(scored.is_anomalous, exported_scored.is_anomalous))
    figures: dict[str, Any] = {
        "images": len(raw),
        "raw_max_abs_difference": float(np.max(np.abs(raw - exported_raw))),
        "raw_max_relative_difference": float(np.max(np.abs(raw - exported_raw)) / span),
        "normalized_max_abs_difference": normalized,
        "labels_identical": same_labels,
        "map_max_abs_difference": map_difference,
        "limit_normalized": MAX_NORMALIZED_DIFFERENCE,
    }
    reasons = []
    if not same_labels:
        flipped = int(np.sum(scored.is_anomalous != exported_scored.is_anomalous))
        reasons.append(f"{flipped} of {len(raw)} validation label(s) differ")
    if not normalized <= MAX_NORMALIZED_DIFFERENCE:  # NaN fails too
        reasons.append(f"normalised scores differ by up to {normalized:.2e} (limit {MAX_NORMALIZED_DIFFERENCE:g})")
    figures["accepted"] = not reasons
    if reasons:
        figures["reason"] = "; ".join(reasons)
    return figures


def with_ood_parity(figures: dict[str, Any], reference: np.ndarray, exported: np.ndarray) -> dict[str, Any]:
    """Add the out-of-distribution check's parity to an fp32 gate's figures: the same flag on every image.

    Args:
        figures: :func:`parity`'s figures.
        reference: Torch's ``ood_score`` of the gate's images.
        exported: The export's, of the same images.

    Returns:
        The figures with ``ood_max_abs_difference`` and ``ood_flags_identical``; refused when a flag differs.
    """
    if len(reference) != len(exported):
        same, difference = False, float("nan")
    else:
        same = bool(np.array_equal(reference >= 1.0, exported >= 1.0))
        difference = float(np.max(np.abs(reference - exported))) if len(reference) else 0.0
    updated = {**figures, "ood_max_abs_difference": difference, "ood_flags_identical": same}
    if not same:
        reason = "the out-of-distribution flags differ from torch's"
        updated["reason"] = f"{figures['reason']}; {reason}" if "reason" in figures else reason
        updated["accepted"] = False
    return updated


def fidelity(fp32_raw: np.ndarray, int8_raw: np.ndarray) -> dict[str, float]:
    """How closely int8 scores follow fp32 ones, without labels: rank correlation, largest difference / fp32 range.

    Args:
        fp32_raw: The fp32 graph's raw scores.
        int8_raw: The int8 graph's, of the same images.

    Returns:
        ``rank_correlation`` and ``largest_relative_difference``; both NaN when they cannot be measured (no
        images, different counts, non-finite fp32 scores).
    """
    if len(fp32_raw) == 0 or len(fp32_raw) != len(int8_raw) or not np.all(np.isfinite(fp32_raw)):
        return {"rank_correlation": float("nan"), "largest_relative_difference": float("nan")}
    span = float(np.ptp(fp32_raw))
    largest = float(np.max(np.abs(int8_raw - fp32_raw)))
    return {
        "rank_correlation": metrics.rank_correlation(fp32_raw, int8_raw),
        "largest_relative_difference": largest / span if span > 0 else float("nan"),
    }


def int8_gate(
    fp32_raw: np.ndarray, int8_raw: np.ndarray, is_ng: np.ndarray | None, calibration: Calibration
) -> tuple[dict[str, Any], Calibration | None]:
    """The int8 accuracy gate: its own calibration from its validation scores, and its AUROC and F1 drops.

    Args:
        fp32_raw: Torch's raw validation scores.
        int8_raw: The int8 graph's, of the same images.
        is_ng: True for NG validation images (None: no labels).
        calibration: The fp32 model's calibration (its method, percentile and class names are reused).

    Returns:
        The figures (``accepted``, ``reason`` when refused; also, reported only, ``rank_correlation`` of the
        int8 scores with the fp32 ones and their ``largest_relative_difference`` to the fp32 score range) and
        the int8 calibration (None when refused).
    """
    if not np.all(np.isfinite(int8_raw)):
        return {"accepted": False, "reason": "the int8 graph gives non-finite scores", "images": len(int8_raw)}, None
    follows = fidelity(fp32_raw, int8_raw)
    if is_ng is None or not np.any(is_ng) or np.all(is_ng):
        reason = "validation holds no NG image (or no OK image), so its AUROC and F1 drops cannot be measured"
        return {"accepted": False, "reason": reason, "images": len(int8_raw), **follows}, None
    own, _ = Calibration.fit(
        int8_raw, is_ng, calibration.method, calibration.percentile, calibration.ok_name, calibration.ng_name
    )
    before = metrics.classification_scores(is_ng, calibration.apply(fp32_raw).is_anomalous, fp32_raw)
    after = metrics.classification_scores(is_ng, own.apply(int8_raw).is_anomalous, int8_raw)
    auroc_drop, f1_drop = before["auroc"] - after["auroc"], before["f1"] - after["f1"]
    figures: dict[str, Any] = {
        "images": len(int8_raw),
        "n_ng": int(np.sum(is_ng)),
        "fp32_auroc": before["auroc"],
        "int8_auroc": after["auroc"],
        "auroc_drop": auroc_drop,
        "fp32_f1": before["f1"],
        "int8_f1": after["f1"],
        "f1_drop": f1_drop,
        "limit_auroc_drop": MAX_AUROC_DROP,
        "limit_f1_drop": MAX_F1_DROP,
        "int8_threshold": own.threshold,
        "fp32_threshold": calibration.threshold,
        **follows,
    }
    reasons = []
    if not auroc_drop <= MAX_AUROC_DROP + DROP_TOLERANCE:
        reasons.append(
            f"validation image AUROC drops by {auroc_drop:.4f} ({before['auroc']:.4f} to {after['auroc']:.4f}; "
            f"limit {MAX_AUROC_DROP:g})"
        )
    if not f1_drop <= MAX_F1_DROP + DROP_TOLERANCE:
        reasons.append(
            f"F1 at the trained threshold drops by {f1_drop:.4f} ({before['f1']:.4f} to {after['f1']:.4f}; "
            f"limit {MAX_F1_DROP:g})"
        )
    figures["accepted"] = not reasons
    if reasons:
        figures["reason"] = "; ".join(reasons)
        return figures, None
    return figures, own
