"""Binned pixel metrics agree with the exact ones (sklearn's AUROC, anomalib's AUPRO) within the stated error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from vad.pixel_metrics import GrowingHistogram, PixelMetrics


def _maps_and_masks(tmp_path, count=12, size=48, seed=0):
    rng = np.random.default_rng(seed)
    maps, paths, masks = [], [], []
    for i in range(count):
        mask = np.zeros((size, size), dtype=bool)
        if i % 2:
            for _ in range(rng.integers(1, 3)):  # one or two blobs: several regions of different sizes
                y, x = rng.integers(2, size - 14, 2)
                h, w = rng.integers(3, 12, 2)
                mask[y : y + h, x : x + w] = True
        raw = rng.normal(10.0 * (i + 1), 3.0, (size, size)) + 6.0 * mask  # each batch shifts the range upward
        path = ""
        if mask.any():
            path = str(tmp_path / f"m{i}.png")
            Image.fromarray((mask * 255).astype(np.uint8)).save(path)
        maps.append(raw.astype(np.float32))
        paths.append(path)
        masks.append(mask)
    return np.stack(maps), paths, np.stack(masks)


def test_binned_pixel_metrics_match_the_exact_ones(tmp_path):
    from anomalib.metrics.aupro import _AUPRO

    maps, paths, masks = _maps_and_masks(tmp_path)
    metrics = PixelMetrics()
    for start in range(0, len(maps), 5):  # batches widen the histogram's range several times
        metrics.update(maps[start : start + 5], paths[start : start + 5])
    result = metrics.compute()
    exact_auroc = roc_auc_score(masks.reshape(-1), maps.reshape(-1))
    assert abs(result["pixel_auroc"] - exact_auroc) <= result["pixel_auroc_bin_error"] + 1e-9
    assert result["pixel_auroc_bin_error"] < 0.002
    aupro = _AUPRO(fpr_limit=0.3)  # private anomalib API: this fails loudly if an upgrade changes it
    aupro.update(torch.from_numpy(maps), torch.from_numpy(masks.astype(np.int64)))
    assert result["pixel_aupro"] == pytest.approx(float(aupro.compute()), abs=0.01)


def test_histogram_memory_is_fixed_and_counts_survive_range_growth():
    histogram = GrowingHistogram(1, bins=64)
    histogram.add(0, np.array([0.0, 1.0]))
    histogram.add(0, np.array([-500.0, 1000.0, 0.5]))
    assert histogram.counts.shape == (1, 64) and histogram.counts.sum() == 5
    assert histogram.low <= -500.0 and histogram.low + histogram.width * 64 > 1000.0


def test_no_defect_pixels_gives_no_metrics():
    metrics = PixelMetrics()
    metrics.update(np.random.default_rng(0).normal(size=(2, 8, 8)), ["", ""])
    assert metrics.compute() == {}


def test_regions_without_opencv_are_opencvs_regions():
    from vad.pixel_metrics import _regions_numpy, regions

    rng = np.random.default_rng(0)
    for _ in range(30):
        mask = rng.random((40, 57)) < rng.uniform(0.05, 0.7)
        count, labels = _regions_numpy(mask)
        expected_count, expected = regions(mask)
        assert count == expected_count
        pairs = set(zip(labels[mask].tolist(), expected[mask].tolist(), strict=True))
        assert len(pairs) == count - 1, "one OpenCV region per fallback region, and back"
        assert (labels[~mask] == 0).all()
