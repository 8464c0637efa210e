"""The int8 fidelity gate on scores: what it keeps, what it refuses and why, and the split it is judged on."""

from __future__ import annotations

import numpy as np
import pytest

from vad.calibration import Calibration
from vad.export import gates
from vad.export.int8 import CALIBRATION_IMAGES, GATE_TRAINING_IMAGES, split_images

# fp32 scores of the gate images: 12 held-out OK training images, then 10 OK and 10 NG validation images.
HELD_OUT = np.linspace(0.10, 0.32, 12)
VALID_OK = np.linspace(0.12, 0.40, 10)
VALID_NG = np.linspace(0.55, 1.20, 10)
FP32 = np.concatenate([HELD_OUT, VALID_OK, VALID_NG])
IS_VALIDATION = np.arange(len(FP32)) >= len(HELD_OUT)
IS_NG = np.arange(20) >= 10
CALIBRATION = Calibration(threshold=0.5, low=0.12, high=1.20, ok_name="good", ng_name="defect")


def _gate(int8_raw: np.ndarray, is_ng: np.ndarray | None = IS_NG) -> dict:
    return gates.int8_gate(FP32, int8_raw, IS_VALIDATION, CALIBRATION, is_ng)


def test_a_faithful_int8_graph_is_kept_with_its_figures():
    noise = np.random.default_rng(0).normal(0.0, 0.002, len(FP32))
    figures = _gate(FP32 + noise)
    assert figures["accepted"], figures.get("reason")
    assert figures["images"] == 32 and figures["validation_images"] == 20 and figures["held_out_training_images"] == 12
    assert figures["rank_correlation"] > 0.99 and figures["largest_difference"] < 0.01
    assert figures["verdict_changes"] == 0 and figures["verdict_changes_outside_tolerance"] == 0
    assert figures["limit_rank_correlation"] == 0.99 and figures["limit_difference"] == 0.05
    # labelled figures are information, with the resolution 10 OK x 10 NG allow
    assert figures["fp32_auroc"] == 1.0 and figures["int8_auroc"] == 1.0
    assert figures["auroc_resolution"] == pytest.approx(0.01) and figures["n_ok"] == 10 and figures["n_ng"] == 10


def test_a_scaled_output_is_refused_though_it_ranks_every_image_as_fp32_does():
    figures = _gate(FP32 * 1.3)
    assert not figures["accepted"]
    assert figures["rank_correlation"] == pytest.approx(1.0)
    assert figures["largest_difference"] > 0.05
    assert "a normalised score differs from fp32's by" in figures["reason"]
    assert "(at most 0.05)" in figures["reason"]


def test_reordered_ok_scores_are_refused_on_the_rank_correlation():
    shuffled = FP32.copy()
    order = np.random.default_rng(1).permutation(len(HELD_OUT))
    shuffled[: len(HELD_OUT)] = HELD_OUT[order] * 0.3 + 0.2  # the held-out OK images, out of order
    figures = _gate(shuffled)
    assert not figures["accepted"]
    assert figures["rank_correlation"] < 0.99
    assert figures["reason"].startswith("its scores rank the 32 gate images with correlation ")


def test_a_verdict_change_counts_only_far_from_the_threshold():
    near = FP32.copy()
    index = len(HELD_OUT) + 9  # the highest OK validation image
    near[index] = 0.49
    base = gates.int8_gate(near, near, IS_VALIDATION, CALIBRATION, IS_NG)
    assert base["accepted"]
    moved = near.copy()
    moved[index] = 0.52  # across the threshold, from 0.49/1.08 below it: within tolerance
    figures = gates.int8_gate(near, moved, IS_VALIDATION, CALIBRATION, IS_NG)
    assert figures["verdict_changes"] == 1 and figures["verdict_changes_outside_tolerance"] == 0
    assert figures["accepted"], figures.get("reason")


def test_a_verdict_change_far_from_the_threshold_is_refused_and_named():
    moved = FP32.copy()
    index = len(HELD_OUT) + 11  # the second lowest NG validation image, 0.12/1.08 above the threshold
    moved[index] = 0.45
    figures = _gate(moved)
    assert not figures["accepted"] and figures["verdict_changes"] == 1
    assert figures["verdict_changes_outside_tolerance"] == 1
    assert "1 validation image(s) change OK/NG verdict" in figures["reason"]


def test_non_finite_or_missing_scores_are_refused():
    broken = FP32.copy()
    broken[3] = np.nan
    assert _gate(broken)["reason"] == "the int8 graph gives non-finite scores"
    assert not _gate(FP32[:-1])["accepted"]


def test_the_gate_needs_no_labels():
    figures = _gate(FP32 + 0.001, is_ng=None)
    assert figures["accepted"] and "fp32_auroc" not in figures


def test_calibration_and_gate_images_are_disjoint_and_deterministic():
    files = [f"good/{k:04d}.png" for k in range(200)]
    calibration, held_out = split_images(files)
    assert len(held_out) == 50 and len(calibration) == 150
    assert not set(calibration) & set(held_out) and set(calibration) | set(held_out) == set(files)
    assert held_out[:2] == ["good/0003.png", "good/0007.png"]
    assert split_images(files) == (calibration, held_out)
    many = [f"good/{k:05d}.png" for k in range(2000)]
    calibration, held_out = split_images(many)
    assert len(calibration) == CALIBRATION_IMAGES and len(held_out) == GATE_TRAINING_IMAGES
    assert not set(calibration) & set(held_out)
    assert split_images(["only.png"]) == (["only.png"], [])


def test_an_out_of_distribution_flag_changed_far_from_its_line_is_refused():
    kept = _gate(FP32)
    fp32_ood = np.full(len(FP32), 0.4)
    fp32_ood[0] = 0.95
    near = fp32_ood.copy()
    near[0] = 1.02  # crosses the flag line from within the tolerance
    figures = gates.with_int8_ood(kept, fp32_ood, near)
    assert figures["accepted"] and figures["ood_flag_changes"] == 1
    far = fp32_ood.copy()
    far[5] = 1.3  # an in-distribution gate image flagged by int8 alone
    figures = gates.with_int8_ood(kept, fp32_ood, far)
    assert not figures["accepted"] and figures["ood_flag_changes_outside_tolerance"] == 1
    assert figures["reason"].startswith("1 gate image(s) change their out-of-distribution flag")
    assert not gates.with_int8_ood(kept, fp32_ood, far[:-1])["accepted"]


def test_parity_explains_the_gate_in_words_with_this_graphs_figures():
    figures = _gate(FP32 * 1.3)
    rule = figures["rule"]
    assert rule.startswith("Kept only when it scores as the fp32 model does on the 32 gate images (12 OK training")
    assert f"(here {figures['rank_correlation']:.4f})" in rule and f"(here {figures['largest_difference']:.3f})" in rule
