"""Calibration: the one place that turns raw scores into OK/NG, saved with the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vad.calibration import CALIBRATION_FILE, Calibration


def test_fit_apply_and_is_anomalous_from_one_source(tmp_path):
    raw = np.array([0.1, 0.2, 0.3, 0.9, 1.1, 1.3])
    is_ng = np.array([False, False, False, True, True, True])
    calibration, table = Calibration.fit(raw, is_ng, "F1", 0.8, "good", "scratch")
    assert 0.3 < calibration.threshold < 0.9 and (calibration.low, calibration.high) == (0.1, 1.3)
    assert float(table["f1"].max()) == 1.0
    scored = calibration.apply(np.array([0.0, 0.5, 5.0]))
    assert scored.is_anomalous.tolist() == [False, False, True]
    assert scored.columns["pred_label"].tolist() == ["good", "good", "scratch"]
    assert scored.columns["anomaly_score"].tolist() == pytest.approx([0.0, float(calibration.normalize(0.5)), 1.0])
    strict = calibration.with_inference_threshold(0.05)
    assert strict.apply(np.array([0.5])).is_anomalous.tolist() == [True]
    assert strict == calibration, "the inference threshold is a run setting, not part of the calibration"
    calibration.save(tmp_path)
    assert Calibration.from_dict(__import__("json").loads((tmp_path / CALIBRATION_FILE).read_text())) == calibration


def test_percentile_threshold_and_names_must_differ():
    raw = np.linspace(0, 1, 11)
    calibration, _ = Calibration.fit(raw, np.zeros(11, dtype=bool), "Percentile", 0.8, "ok", "NG")
    assert calibration.threshold == pytest.approx(0.8)
    with pytest.raises(ValueError, match="must differ"):
        Calibration(0.5, 0.0, 1.0, "NG", "NG", "F1", 0.8)


def test_normalisation_is_anomalibs_post_processor_formula():
    """Fails loudly if an anomalib upgrade changes the private normalisation our scores reproduce."""
    from anomalib.post_processing import PostProcessor

    calibration = Calibration(3.7, -1.2, 8.9, "good", "bad", "F1", 0.8)
    raw = np.random.default_rng(0).normal(3, 5, 1000).astype(np.float32)
    theirs = PostProcessor._normalize(
        torch.from_numpy(raw), torch.tensor(calibration.low), torch.tensor(calibration.high), torch.tensor(3.7)
    )
    assert np.allclose(calibration.normalize(raw), theirs.numpy(), atol=1e-6)
