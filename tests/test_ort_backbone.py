"""The scoring backbone in ONNX Runtime: torch's features, and torch's forward kept whenever that is not so."""

from __future__ import annotations

import builtins
import logging

import pytest
import torch
from torch import nn

from vad.models import ort_backbone as ort


def small_graph() -> nn.Module:
    torch.manual_seed(0)

    class TwoLayers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6())
            self.second = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Conv2d(8, 16, 1))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            one = self.first(x)
            return one, self.second(one)

    return TwoLayers().eval()


def test_features_equal_torch_for_any_batch_size():
    graph = small_graph()
    backbone = ort.ort_backbone(graph, (24, 32), threads=2)
    assert backbone is not None
    images = torch.randn(5, 3, 24, 32)  # another batch size than the export's example
    with torch.inference_mode():
        expected = graph(images)
    found = backbone(images)
    assert [f.shape for f in found] == [e.shape for e in expected]
    for a, b in zip(found, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_features_that_differ_keep_torch(monkeypatch, caplog):
    monkeypatch.setattr(ort, "MAX_RELATIVE_DIFFERENCE", -1.0)  # nothing passes the check
    with caplog.at_level(logging.WARNING):
        assert ort.ort_backbone(small_graph(), (16, 16), threads=1) is None
    assert "torch scores" in caplog.text


def test_without_onnxruntime_torch_scores(monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    assert ort.ort_backbone(small_graph(), (16, 16), threads=1) is None


@pytest.mark.slow
def test_a_loaded_model_scores_as_with_torchs_backbone(tmp_path):
    from conftest import load_default_plan, make_dataset, set_external, step_args, write_plan

    import main
    from vad.detector import Detector

    make_dataset(tmp_path / "data")
    plan = load_default_plan()
    set_external(plan, "load_train_data_path", "data")
    step_args(plan, "train", "train").update({"img_size": [64, 64], "batch_size": 8})
    assert main.main(["--mode", "train", "--config", str(write_plan(tmp_path, plan))]) == 0
    detector = Detector.load(tmp_path / "train_artifacts" / "models", runtime="torch")
    scorer = detector.trained.model
    assert scorer.embedding_runtime is not None  # the sample backbone and embedding run in ONNX Runtime
    images = sorted((tmp_path / "data").rglob("*.png"))[:6]
    with_runtime = detector.predict(images, maps=True)
    scorer.embedding_runtime = None  # torch's forward
    with_torch = detector.predict(images, maps=True)
    assert [p.raw_score for p in with_runtime] == pytest.approx([p.raw_score for p in with_torch], rel=1e-4, abs=1e-5)
    for a, b in zip(with_runtime, with_torch, strict=True):
        assert abs(a.anomaly_map - b.anomaly_map).max() < 1e-4
