"""The plain-torch scorers give the scores of the anomalib models they were saved from, without importing them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, defect, texture

from vad.calibration import Calibration
from vad.models import ModelSpec, entry
from vad.models.factory import build_model, load, save
from vad.models.graph import GRAPH_FILE, load_graph
from vad.models.scorer import GraphScorer

LOGGER = logging.getLogger("assets.test")
CALIBRATION = Calibration(0.0, -1.0, 1.0, "good", "bad", "F1", 0.8)


def _images(count, seed, bad=False):
    rng = np.random.default_rng(seed)
    array = np.stack([defect(rng, texture(rng)) if bad else texture(rng) for _ in range(count)]) / 255.0
    return torch.from_numpy(((array - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32))


def _fitted(model_name, backbone, layers):
    extra = {"flow_steps": 2} if model_name == "fastflow" else {}
    params = entry(model_name).params(backbone=backbone, layers=layers, **extra)
    spec = ModelSpec(model_name, (64, 64), (0.5,) * 3, (0.5,) * 3, params)
    torch.manual_seed(0)
    model = build_model(spec, pretrained=backbone != "resnet18")
    train = _images(8, 0)
    if model_name == "patchcore":
        model.fit_bank(iter(train.split(4)), 8, 0.5, 0, LOGGER)
    elif model_name == "padim":
        model.fit_gaussians(iter(train.split(4)), 8, LOGGER)
    else:
        for name, parameter in model.fast_flow_blocks.named_parameters():  # move the flows off the identity
            if "w_perm" not in name:
                parameter.data.add_(torch.randn_like(parameter) * 0.05)
    return model


@pytest.mark.parametrize(
    ("model_name", "backbone", "layers"),
    [
        ("patchcore", "mobilenetv2_100", ["blocks.2", "blocks.4"]),
        ("patchcore", "tf_efficientnet_lite0", ["blocks.2", "blocks.4"]),
        ("fastflow", "tf_efficientnet_lite0", ["blocks.2", "blocks.4"]),
        ("fastflow", "resnet18", ["layer1", "layer2"]),
        ("padim", "mobilenetv2_100", ["blocks.2", "blocks.4"]),
    ],
)
@pytest.mark.slow
def test_scorer_gives_the_models_scores_and_maps(tmp_path, model_name, backbone, layers):
    model = _fitted(model_name, backbone, layers)
    images = torch.cat([_images(3, 5), _images(3, 6, bad=True)])
    expected_scores, expected_maps = model.score(images)
    save(model, CALIBRATION, {}, tmp_path)
    assert (tmp_path / GRAPH_FILE).is_file()
    loaded = load(tmp_path)
    assert isinstance(loaded.model, GraphScorer), "a model saved with its graph scores without anomalib"
    scores, maps = loaded.model.score(images)
    assert np.allclose(scores, expected_scores, rtol=1e-4, atol=1e-5)
    assert np.allclose(maps, expected_maps, rtol=1e-4, atol=1e-5)
    assert len(np.unique(scores)) == 6
    described_scores, _, descriptors = loaded.model.score_described(images, maps=False)
    assert np.allclose(described_scores, scores, rtol=1e-5, atol=1e-6), "the descriptor costs no other score"
    assert np.allclose(descriptors, model.describe(images), rtol=1e-4, atol=1e-4), "tapped from the same features"
    if getattr(loaded.model, "embedding_runtime", None) is not None:  # PatchCore's backbone + embedding graph
        loaded.model.features = lambda _: pytest.fail("the descriptor took a second backbone pass")
        assert np.allclose(loaded.model.score_described(images, maps=False)[2], descriptors, rtol=1e-5, atol=1e-5)


def test_graph_file_names_only_allowlisted_modules(tmp_path):
    model = _fitted("patchcore", "mobilenetv2_100", ["blocks.2", "blocks.4"])
    save(model, CALIBRATION, {}, tmp_path)
    description = json.loads((tmp_path / GRAPH_FILE).read_text())
    assert {m["type"] for m in description["modules"].values()} <= {"Conv2d", "Identity", "ReLU6"}
    description["modules"]["conv_stem"]["type"] = "os.system"
    (tmp_path / GRAPH_FILE).write_text(json.dumps(description))
    with pytest.raises(ValueError, match="outside the allowlist"):
        load_graph(tmp_path)


@pytest.mark.slow
def test_scoring_a_saved_model_imports_neither_timm_nor_anomalib(tmp_path):
    model = _fitted("patchcore", "mobilenetv2_100", ["blocks.2", "blocks.4"])
    save(model, CALIBRATION, {}, tmp_path)
    code = (
        "import sys, torch\n"
        "from vad.models.factory import load\n"
        "loaded = load(__import__('pathlib').Path(sys.argv[1]))\n"
        "loaded.model.score(torch.zeros(1, 3, 64, 64))\n"
        "heavy = sorted(m for m in ('timm', 'anomalib', 'torchvision', 'lightning') if m in sys.modules)\n"
        "print(type(loaded.model).__name__, heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "PatchcoreScorer []"
