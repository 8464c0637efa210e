"""The model registry: a third model (PaDiM) through the unchanged steps, and plan keys generated from it."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import step_args, write_plan

import main
from vad.models import MODELS, model_parameters_class

LOGGER = logging.getLogger("assets.test")


def test_plan_keys_and_model_names_come_from_the_registry():
    keys = set(model_parameters_class().model_fields)
    for name, registered in MODELS.items():
        for field in registered.params.model_fields:
            assert (field if field in registered.params.PLAIN_KEYS else f"{name}_{field}") in keys
    values = model_parameters_class().model_validate({"padim_backborn": "resnet18", "padim_n_features": 50})
    assert values.for_model("padim").backbone == "resnet18" and values.for_model("padim").n_features == 50


@pytest.mark.slow
def test_padim_trains_and_scores_through_main(project):
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "train")["model_name"] = "padim"
    step_args(plan, "train", "train")["model_parameters"] = {"padim_backbone": "mobilenetv2_100"}
    assert main.main(["--mode", "all", "--config", str(write_plan(root, plan))]) == 0
    config = json.loads((root / "train_artifacts/models/train/train_config.json").read_text())
    assert config["model"]["model_name"] == "padim" and config["model"]["params"]["n_features"] is None
    assert pd.read_csv(root / "train_artifacts/output/validation_score.csv")["auroc"].iloc[0] >= 0.9
    output = pd.read_csv(root / "inference_artifacts/output/output.csv")
    ng, ok = output[output["image_path"].str.startswith("ng_")], output[output["image_path"].str.startswith("ok_")]
    assert ng["anomaly_score"].min() > ok["anomaly_score"].max()


def test_streamed_gaussians_match_anomalibs_fit():
    from anomalib.models.components import MultiVariateGaussian

    from vad.models import ModelSpec, entry
    from vad.models.factory import build_model

    spec = ModelSpec(
        "padim",
        (64, 64),
        (0.5,) * 3,
        (0.5,) * 3,
        entry("padim").params(backbone="resnet18", layers=["layer1", "layer2"], n_features=20),
    )
    torch.manual_seed(0)
    model = build_model(spec, pretrained=False)
    images = torch.randn(10, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model.fit_gaussians(iter(images.split(3)), 10, LOGGER)
    reference = MultiVariateGaussian()
    reference.fit(model.embed(images))
    assert torch.allclose(model.gaussian.mean, reference.mean, atol=1e-5)
    assert torch.allclose(model.gaussian.inv_covariance, reference.inv_covariance, rtol=1e-3, atol=1e-3)
    scores, maps = model.score(images[:2])
    assert maps.shape == (2, 64, 64) and np.allclose(scores, maps.reshape(2, -1).max(axis=1))


def test_padim_rejects_more_features_than_the_backbone_has(project, capsys):
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "train")["model_name"] = "padim"
    step_args(plan, "train", "train")["model_parameters"] = {"padim_n_features": 4000}
    assert main.main(["--mode", "train", "--config", str(write_plan(root, plan))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(err) == 1 and "padim_n_features is 4000" in err[0]


@pytest.mark.parametrize("key", ["ok_class", "threshold_method", "train_validate_column"])
def test_training_keys_in_the_inference_pipeline_stop_the_run(project, capsys, key):
    root, plan = project["root"], project["plan"]
    step_args(plan, "inference", "readiness")[key] = "x"
    assert main.main(["--mode", "inference", "--config", str(write_plan(root, plan))]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "unknown key 'user_parameters.inference_pipeline.readiness.args." in err
        and key in err
        and "allowed keys: mask_column" in err
    )


# A fourth model added the way a developer adds one: its own folder (here a package in a temporary folder) and one
# registry line. Nothing else is told about it. What a model must provide, and nothing more:
# - a parameter class (its plan keys, ``dummy_*``, and their defaults), a subclass of ``ModelParams``;
# - a model class (``VadModel``): ``from_spec`` (construct it from the spec), ``fit`` and ``scores_and_maps`` (or an
#   anomalib forward); building, ImageNet weights, the folded backbone and ``prepare`` come from the base class;
# - a scorer (``GraphScorer``) on the saved backbone graph: its constructor's arguments read from the model's state
#   dict (``STATE_KEYS``) and a ``forward`` giving the model's scores and maps.
# Here: the distance of each patch's features to the training images' mean feature at that position.
DUMMY_PACKAGE = '''
from typing import ClassVar

import torch
import torch.nn.functional as F
from anomalib.models.components import TimmFeatureExtractor

from vad.models.base import VadModel, training_passes
from vad.models.scorer import GraphScorer
from vad.models.spec import ModelParams


class DummyParams(ModelParams):
    """The dummy model's parameters (plan keys dummy_*)."""

    DEFAULT_IMG_SIZE: ClassVar[tuple[int, int]] = (96, 96)
    backbone: str = "mobilenetv2_100"


def distance_maps(feature, mean, size):
    distances = (feature - mean).pow(2).sum(dim=1, keepdim=True).sqrt()
    maps = F.interpolate(distances, size=tuple(size), mode="bilinear", align_corners=False)
    return maps.amax(dim=(1, 2, 3)), maps


class DummyModel(VadModel):
    def __init__(self, backbone, layers):
        super().__init__()
        self.feature_extractor = TimmFeatureExtractor(backbone=backbone, layers=list(layers), pre_trained=False)
        self.register_buffer("mean", torch.empty(0))

    @classmethod
    def from_spec(cls, spec):
        return cls(spec.backbone, spec.layers)

    def first_layer(self, images):
        with torch.no_grad():
            return self.scoring_backbone()(images.to(self.device))[0]

    def fit(self, train, valid, options, logger):
        batches, count = training_passes(train, self.spec, options)
        self.mean = sum(self.first_layer(images).sum(dim=0, keepdim=True) for images in batches) / count
        return {}

    def scores_and_maps(self, images, maps):
        scores, found = distance_maps(self.first_layer(images), self.mean, self.spec.input_size)
        return scores, found if maps else None


class DummyScorer(GraphScorer):
    STATE_KEYS: ClassVar[dict[str, str]] = {"mean": "mean"}

    def __init__(self, spec, backbone, mean):
        super().__init__(spec, backbone)
        self.register_buffer("mean", mean)

    def forward(self, images):
        return distance_maps(self.features(images)[0], self.mean, self.spec.input_size)


IMPLEMENTATION = "dummy_model:DummyModel"
SCORER = "dummy_model:DummyScorer"
'''
DUMMY_RUN = """
import sys
import dummy_model
from vad.models import MODELS, ModelEntry

MODELS["dummy"] = ModelEntry("dummy", dummy_model.DummyParams, dummy_model.IMPLEMENTATION, dummy_model.SCORER)

import main
from apps.web.training import offered_models
from vad.tuning.space import auto_dimensions

assert "dummy" in offered_models(), offered_models()
space = {dimension.key: dimension.choices for dimension in auto_dimensions()}
assert "dummy" in space["model_name"] and "model_parameters.dummy_backbone" in space, space
code = main.main(["--mode", "all", "--config", sys.argv[1]])
if code == 0:  # the inference scored through the dummy's own scorer, on the saved backbone graph
    from pathlib import Path
    from vad.models.factory import load

    loaded = load(Path(sys.argv[1]).parent / "train_artifacts/models/train")
    assert type(loaded.model).__name__ == "DummyScorer", type(loaded.model)
sys.exit(code)
"""


@pytest.mark.slow
def test_a_model_added_through_the_registry_alone_reaches_the_page_the_tuner_and_main(project, tmp_path):
    import subprocess
    import sys

    (tmp_path / "dummy_model.py").write_text(DUMMY_PACKAGE, encoding="utf-8")
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "train")["model_name"] = "dummy"
    step_args(plan, "train", "train")["model_parameters"] = {"dummy_backbone": "mobilenetv2_100"}
    step_args(plan, "train", "train")["export"] = []
    path = write_plan(root, plan)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": f"{tmp_path}:{main.__file__.rsplit('/', 1)[0]}",
    }
    done = subprocess.run(
        [sys.executable, "-c", DUMMY_RUN, str(path)], capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((root / "train_artifacts/models/train/train_config.json").read_text())
    assert config["model"]["model_name"] == "dummy"
    scores = pd.read_csv(root / "inference_artifacts/output/output.csv")["anomaly_score"]
    assert len(scores) > 0 and scores.notna().all() and scores.nunique() > 1
