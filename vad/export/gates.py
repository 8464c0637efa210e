"""The gates an exported graph must pass before it is kept: fp32 parity with torch, int8 fidelity to fp32.

**fp32 parity** (``onnx``, ``openvino``): the validation images scored through torch and through the exported graph;
the normalised scores (``anomaly_score``) of every image within :data:`MAX_NORMALIZED_DIFFERENCE` and every OK/NG
label the same.

**int8 fidelity** (``openvino_int8``): an int8 graph cannot match fp32 to 1e-3, and a labelled AUROC on a few dozen
validation images moves with one swapped OK/NG pair (1 / (n_ok x n_ng): 0.005 for 20 OK x 10 NG), which is noise,
not fidelity. So the int8 graph is judged against the accepted fp32 model, without labels, on every image it may
see at validation time that the quantiser did not: OK training images held out from its calibration and all
validation images (:func:`int8_gate`). The labelled AUROC and F1 of both are reported beside, as information.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vad import metrics
from vad.calibration import Calibration

MAX_NORMALIZED_DIFFERENCE = 1e-3  # the fp32 gate: normalised scores of every validation image within this
# The int8 gate (:func:`int8_gate`), label-free: fidelity to the accepted fp32 model on every gate image.
MIN_RANK_CORRELATION = 0.99  # Spearman rank correlation of the int8 raw scores with fp32's, at least
MAX_SCORE_DIFFERENCE = 0.05  # largest normalised-score difference (a share of the fp32 score range), at most
# An out-of-distribution flag (``ood_score`` >= 1) the int8 graph changes is tolerated only where fp32's
# ``ood_score`` was this close to 1 (a share of the check's threshold distance).
OOD_TOLERANCE = 0.1


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
        updated.update(accepted=False, reason=_joined(figures, "the out-of-distribution flags differ from torch's"))
    return updated


def fidelity(fp32_raw: np.ndarray, int8_raw: np.ndarray, calibration: Calibration) -> dict[str, float]:
    """How closely int8 scores follow fp32 ones, without labels: rank correlation and largest normalised difference.

    Args:
        fp32_raw: The fp32 model's raw scores.
        int8_raw: The int8 graph's, of the same images.
        calibration: The fp32 model's calibration: its normalisation (one unit is the fp32 validation score range).

    Returns:
        ``rank_correlation`` (Spearman) and ``largest_difference`` (the largest difference of the normalised
        scores, ``anomaly_score``, both normalised by the fp32 calibration); both NaN when they cannot be measured
        (no images, different counts, non-finite scores).
    """
    if (
        len(fp32_raw) == 0
        or len(fp32_raw) != len(int8_raw)
        or not np.all(np.isfinite(fp32_raw))
        or not np.all(np.isfinite(int8_raw))
    ):
        return {"rank_correlation": float("nan"), "largest_difference": float("nan")}
    difference = np.abs(calibration.normalize(int8_raw).astype(np.float64) - calibration.normalize(fp32_raw))
    return {
        "rank_correlation": metrics.rank_correlation(fp32_raw, int8_raw),
        "largest_difference": float(np.max(difference)),
    }


def labelled_figures(
    fp32_raw: np.ndarray, int8_raw: np.ndarray, is_ng: np.ndarray | None, calibration: Calibration
) -> dict[str, Any]:
    """Validation image AUROC and F1 of both graphs at the trained threshold: information, never the gate.

    Args:
        fp32_raw: The fp32 model's raw validation scores.
        int8_raw: The int8 graph's.
        is_ng: True for NG validation images (None: no labels).
        calibration: The fp32 model's calibration (its threshold decides both graphs' verdicts).

    Returns:
        ``fp32_auroc``, ``int8_auroc``, ``fp32_f1``, ``int8_f1``, ``n_ok``, ``n_ng`` and ``auroc_resolution`` (what
        one OK/NG pair swapping moves the AUROC by: 1 / (n_ok x n_ng)); empty without both OK and NG images.
    """
    if is_ng is None or len(is_ng) != len(fp32_raw) or not np.any(is_ng) or np.all(is_ng):
        return {}
    before = metrics.classification_scores(is_ng, calibration.apply(fp32_raw).is_anomalous, fp32_raw)
    after = metrics.classification_scores(is_ng, calibration.apply(int8_raw).is_anomalous, int8_raw)
    n_ng = int(np.sum(is_ng))
    n_ok = len(is_ng) - n_ng
    return {
        "fp32_auroc": before["auroc"],
        "int8_auroc": after["auroc"],
        "fp32_f1": before["f1"],
        "int8_f1": after["f1"],
        "n_ok": n_ok,
        "n_ng": n_ng,
        "auroc_resolution": 1.0 / (n_ok * n_ng),
    }


def int8_gate(
    fp32_raw: np.ndarray,
    int8_raw: np.ndarray,
    is_validation: np.ndarray,
    calibration: Calibration,
    is_ng: np.ndarray | None = None,
) -> dict[str, Any]:
    """The int8 fidelity gate: does the int8 graph score the gate images as the accepted fp32 model does?

    Label-free. The gate images are OK training images the quantiser never saw and the validation images. The
    int8 graph is kept when (a) the rank correlation of its raw scores with fp32's is at least
    :data:`MIN_RANK_CORRELATION`, (b) no normalised score (``anomaly_score``, the fp32 calibration's) differs from
    fp32's by more than :data:`MAX_SCORE_DIFFERENCE` (a share of the fp32 validation score range) and (c) no
    validation image changes verdict at the trained threshold unless fp32 scored it within that tolerance of the
    threshold. The kept graph uses the fp32 calibration: its verdicts are fp32's but for images that close.

    Args:
        fp32_raw: The fp32 model's (torch's) raw scores of the gate images.
        int8_raw: The int8 graph's, of the same images.
        is_validation: True for the gate images that are validation images (the others: held-out OK training).
        calibration: The fp32 model's calibration.
        is_ng: True for NG validation images, one per validation image (None: no labels); for information only.

    Returns:
        The figures: ``accepted``, ``reason`` when refused, ``rank_correlation``, ``largest_difference``,
        ``verdict_changes`` and ``verdict_changes_outside_tolerance`` (validation images), the limits, the image
        counts, and the labelled figures of :func:`labelled_figures` (information).
    """
    fp32_raw, int8_raw = np.asarray(fp32_raw, dtype=np.float64), np.asarray(int8_raw, dtype=np.float64)
    is_validation = np.asarray(is_validation, dtype=bool)
    figures: dict[str, Any] = {
        "images": len(int8_raw),
        "validation_images": int(np.sum(is_validation)),
        "held_out_training_images": int(np.sum(~is_validation)),
        "limit_rank_correlation": MIN_RANK_CORRELATION,
        "limit_difference": MAX_SCORE_DIFFERENCE,
        **fidelity(fp32_raw, int8_raw, calibration),
    }
    if not np.all(np.isfinite(int8_raw)):
        return {**figures, "accepted": False, "reason": "the int8 graph gives non-finite scores"}
    if len(int8_raw) != len(fp32_raw) or len(is_validation) != len(fp32_raw):
        return {**figures, "accepted": False, "reason": "the int8 graph did not score every gate image"}
    before = calibration.apply(fp32_raw[is_validation])
    after = calibration.apply(int8_raw[is_validation])
    changed = before.is_anomalous != after.is_anomalous
    near = np.abs(before.columns["anomaly_score"] - calibration.inference_threshold) <= MAX_SCORE_DIFFERENCE
    figures["verdict_changes"] = int(np.sum(changed))
    figures["verdict_changes_outside_tolerance"] = int(np.sum(changed & ~near))
    figures.update(labelled_figures(fp32_raw[is_validation], int8_raw[is_validation], is_ng, calibration))
    reasons = []
    correlation, difference = figures["rank_correlation"], figures["largest_difference"]
    if not correlation >= MIN_RANK_CORRELATION:  # NaN fails too
        reasons.append(
            f"its scores rank the {len(fp32_raw)} gate images with correlation {correlation:.4f} to fp32's "
            f"(at least {MIN_RANK_CORRELATION:g} needed)"
        )
    if not difference <= MAX_SCORE_DIFFERENCE:
        reasons.append(
            f"a normalised score differs from fp32's by {difference:.3f} of the fp32 score range "
            f"(at most {MAX_SCORE_DIFFERENCE:g})"
        )
    if figures["verdict_changes_outside_tolerance"]:
        reasons.append(
            f"{figures['verdict_changes_outside_tolerance']} validation image(s) change OK/NG verdict though fp32 "
            f"scored them more than {MAX_SCORE_DIFFERENCE:g} from the threshold"
        )
    figures["accepted"] = not reasons
    figures["rule"] = _rule_in_words(figures)
    if reasons:
        figures["reason"] = "; ".join(reasons)
    return figures


def _rule_in_words(figures: dict[str, Any]) -> str:
    """The gate and this graph's figures in one sentence a quality engineer can check against the numbers."""
    return (
        f"Kept only when it scores as the fp32 model does on the {figures['images']} gate images "
        f"({figures['held_out_training_images']} OK training images the quantiser never saw and "
        f"{figures['validation_images']} validation images): its scores rank them with correlation at least "
        f"{MIN_RANK_CORRELATION:g} to fp32's (here {figures['rank_correlation']:.4f}), no anomaly_score differs "
        f"from fp32's by more than {MAX_SCORE_DIFFERENCE:g} (here {figures['largest_difference']:.3f}), and no "
        f"validation image changes OK/NG verdict unless fp32 scored it within {MAX_SCORE_DIFFERENCE:g} of the "
        f"threshold (here {figures['verdict_changes_outside_tolerance']} that do, of "
        f"{figures['verdict_changes']} changes). The labelled AUROC and F1 are information only."
    )


def with_int8_ood(figures: dict[str, Any], fp32_ood: np.ndarray, int8_ood: np.ndarray) -> dict[str, Any]:
    """Add the out-of-distribution check to the int8 gate: no gate image changes its flag far from the flag line.

    The gate images are the product's own, so an int8 graph that flags one of them (or clears one fp32 flagged)
    would reject good parts at the edge; a change is tolerated where fp32's ``ood_score`` was within
    :data:`OOD_TOLERANCE` of 1.

    Args:
        figures: :func:`int8_gate`'s figures.
        fp32_ood: Torch's ``ood_score`` of the gate images.
        int8_ood: The int8 graph's.

    Returns:
        The figures with ``ood_flag_changes``, ``ood_flag_changes_outside_tolerance`` and
        ``ood_largest_difference``; refused when a change is outside the tolerance.
    """
    if len(fp32_ood) != len(int8_ood) or not np.all(np.isfinite(int8_ood)):
        reason = "the int8 graph's out-of-distribution scores are missing or not finite"
        return {**figures, "accepted": False, "reason": _joined(figures, reason)}
    changed = (fp32_ood >= 1.0) != (int8_ood >= 1.0)
    outside = int(np.sum(changed & (np.abs(fp32_ood - 1.0) > OOD_TOLERANCE)))
    updated = {
        **figures,
        "ood_flag_changes": int(np.sum(changed)),
        "ood_flag_changes_outside_tolerance": outside,
        "ood_largest_difference": float(np.max(np.abs(fp32_ood - int8_ood))) if len(fp32_ood) else 0.0,
    }
    if outside:
        reason = (
            f"{outside} gate image(s) change their out-of-distribution flag though fp32's ood_score was more than "
            f"{OOD_TOLERANCE:g} from 1"
        )
        updated.update(accepted=False, reason=_joined(figures, reason))
    return updated


def _joined(figures: dict[str, Any], reason: str) -> str:
    return f"{figures['reason']}; {reason}" if figures.get("reason") else reason
