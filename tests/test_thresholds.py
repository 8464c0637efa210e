"""Threshold sweep, F1/percentile thresholds, normalisation and certainty maths."""

from __future__ import annotations

import numpy as np
import pytest

from vad.calibration import Calibration
from vad.thresholds import SWEEP_COLUMNS, certainty, f1_threshold, percentile_threshold, sweep


def test_sweep_counts_match_brute_force():
    rng = np.random.default_rng(3)
    scores = np.round(rng.uniform(0, 1, 40), 2)
    is_ng = rng.uniform(size=40) < 0.3
    table = sweep(scores, is_ng)
    assert list(table.columns) == SWEEP_COLUMNS
    assert len(table) == len(np.unique(scores)) + 1
    for row in table.itertuples():
        pred = scores >= row.threshold
        assert row.tp == np.sum(pred & is_ng) and row.fp == np.sum(pred & ~is_ng)
        assert row.tn == np.sum(~pred & ~is_ng) and row.fn == np.sum(~pred & is_ng)
        assert row.accuracy == pytest.approx(np.mean(pred == is_ng))


def test_f1_threshold_separates_perfectly_with_margin():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    is_ng = np.array([False, False, False, True, True])
    threshold = f1_threshold(sweep(scores, is_ng))
    assert threshold == pytest.approx(0.55)


def test_f1_threshold_prefers_best_f1_when_overlapping():
    scores = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    is_ng = np.array([False, False, False, True, True, True])
    table = sweep(scores, is_ng)
    threshold = f1_threshold(table)
    pred = scores >= threshold
    tp = np.sum(pred & is_ng)
    f1 = 2 * tp / (pred.sum() + is_ng.sum())
    assert f1 == pytest.approx(table["f1"].max())


def test_percentile_threshold():
    ok = np.arange(1, 101, dtype=float)
    assert percentile_threshold(ok, 0.8) == pytest.approx(np.quantile(ok, 0.8))
    assert np.mean(ok < percentile_threshold(ok, 0.8)) == pytest.approx(0.8, abs=0.01)


def test_normalize_maps_threshold_to_half_and_clips():
    calibration = Calibration(5.0, 0.0, 10.0, "good", "bad", "F1", 0.8)
    values = calibration.normalize(np.array([0.0, 3.0, 5.0, 10.0, 20.0]))
    assert values.tolist() == pytest.approx([0.0, 0.3, 0.5, 1.0, 1.0])


def test_certainty_is_one_minus_binary_entropy():
    assert certainty(np.array([0.0, 1.0, 0.5])).tolist() == pytest.approx([1.0, 1.0, 0.0])
    p = 0.9
    expected = 1 + p * np.log2(p) + (1 - p) * np.log2(1 - p)
    assert float(certainty(p)) == pytest.approx(expected)


def test_threshold_policy_falls_back_to_the_label_free_method_with_too_few_ng_images():
    from vad.threshold_policy import ThresholdPolicy

    policy = ThresholdPolicy("F1", num_minor_threshold=5, ratio_minor_threshold=0.1)
    assert policy.choose(ok_valid=20, ng_valid=10) == ("F1", "")
    chosen, reason = policy.choose(ok_valid=20, ng_valid=5)
    assert chosen == "Percentile" and "only 5 NG" in reason
    chosen, reason = policy.choose(ok_valid=200, ng_valid=10)
    assert chosen == "Percentile" and "ratio" in reason
    assert ThresholdPolicy("Percentile").choose(ok_valid=20, ng_valid=0) == ("Percentile", "")


def test_a_new_threshold_method_is_one_class(monkeypatch):
    """A method registered in the policy's table is what calibration and the epoch metric use: nothing else."""
    from vad import threshold_policy
    from vad.calibration import Calibration

    class Midpoint(threshold_policy.ThresholdMethod):
        name = "Midpoint"
        needs_ng = True

        def threshold(self, raw, is_ng, table, percentile):
            return float((raw[~is_ng].max() + raw[is_ng].min()) / 2)

    monkeypatch.setitem(threshold_policy.METHODS, "Midpoint", Midpoint())
    raw = np.array([0.1, 0.2, 0.3, 0.9, 1.1])
    is_ng = np.array([False, False, False, True, True])
    calibration, _ = Calibration.fit(raw, is_ng, "Midpoint", 0.8, "OK", "NG")
    assert calibration.threshold == pytest.approx(0.6) and calibration.method == "Midpoint"
    assert threshold_policy.method("Midpoint").monitor("image_AUROC") == "image_AUROC"
    assert threshold_policy.ThresholdPolicy("Midpoint").choose(20, 2)[0] == "Percentile"
    assert threshold_policy.method("Percentile").monitor("image_AUROC") == "loss"
