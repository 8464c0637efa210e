"""SuperSimpleNet: trains through main.py, its scorer and export give the model's scores, training is seeded."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import step_args, write_plan

import main
from vad.models import ModelSpec, entry
from vad.models.base import FitData, FitOptions
from vad.models.factory import build_model

LOGGER = logging.getLogger("assets.test")


def _spec(**params) -> ModelSpec:
    values = {"backbone": "mobilenetv2_100", "layers": ["blocks.2", "blocks.4"], **params}
    return ModelSpec("supersimplenet", (64, 64), (0.5,) * 3, (0.5,) * 3, entry("supersimplenet").params(**values))


def _fitted(tmp_path, seed: int = 0, **params):
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for index in range(6):
        path = tmp_path / f"ok_{index}.png"
        Image.fromarray((rng.random((64, 64, 3)) * 60 + 100).astype(np.uint8)).save(path)
        files.append(str(path))
    torch.manual_seed(0)  # the random backbone (no ImageNet weights in a unit test)
    model = build_model(_spec(**params), pretrained=False)
    options = FitOptions(batch_size=4, max_epochs=2, seed=seed, monitor="loss")
    fit = model.fit(FitData(files[:4]), FitData(files[4:]), options, LOGGER)
    return model, fit, files


@pytest.mark.slow
def test_supersimplenet_trains_and_scores_through_main(project):
    root, plan = project["root"], project["plan"]
    train = step_args(plan, "train", "train")
    train.update({"model_name": "supersimplenet", "max_epochs": 4})
    train["model_parameters"] = {"supersimplenet_backbone": "mobilenetv2_100"}
    assert main.main(["--mode", "all", "--config", str(write_plan(root, plan))]) == 0
    config = json.loads((root / "train_artifacts/models/train/train_config.json").read_text())
    assert config["model"]["model_name"] == "supersimplenet"
    assert config["model"]["params"]["noise_std"] == 1.0
    fit = config["training"]["fit_metrics"]
    assert 1 <= fit["epoch"] <= 4 and fit["history"][0]["epoch"] == 1
    output = pd.read_csv(root / "inference_artifacts/output/output.csv")
    assert len(output) > 0 and output["anomaly_score"].notna().all()
    assert (root / "train_artifacts/models/train/backbone_graph.json").is_file()  # scored through the graph


@pytest.mark.slow
def test_training_standardises_the_features_and_is_seeded(tmp_path):
    model, fit, files = _fitted(tmp_path)
    assert {"image_AUROC", "image_F1Score", "loss", "epoch", "history"} <= set(fit)
    from vad.batches import loader

    images = torch.cat([batch for batch, _ in loader(files[:4], model.spec, 4)])
    standardised = model.standardise(model.raw_features(images))
    assert abs(float(standardised.mean())) < 1e-3
    assert torch.allclose(standardised.transpose(0, 1).flatten(1).std(dim=1, unbiased=False), torch.ones(1), atol=1e-2)
    again, _, _ = _fitted(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    other, _, _ = _fitted(tmp_path, seed=1)
    assert not torch.equal(model.adaptor.projection.weight, other.adaptor.projection.weight)


@pytest.mark.slow
def test_scorer_gives_the_models_scores_and_maps(tmp_path):
    for image_score in ("map_max", "classifier"):
        model, _, _ = _fitted(tmp_path, image_score=image_score)
        images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        scores, maps = model.score(images)
        scorer = (
            entry("supersimplenet").scorer_class().from_state(model.spec, model.state_dict(), model.scoring_backbone())
        )
        with torch.inference_mode():
            found_scores, found_maps = scorer(images)
            graph_scores, graph_maps = scorer.graph_forward(images)
        assert np.allclose(found_scores.numpy(), scores, atol=1e-4), image_score
        assert np.allclose(found_maps[:, 0].numpy(), maps, atol=1e-4)
        assert np.allclose(graph_scores.numpy(), scores, atol=1e-4)
        assert np.allclose(graph_maps[:, 0].numpy(), maps, atol=1e-4)
        if image_score == "map_max":
            assert np.allclose(scores, maps.reshape(3, -1).max(axis=1))


def test_the_epoch_keeper_keeps_the_latest_epoch_as_good_as_the_best_and_stops_on_patience():
    from vad.models.epochs import EpochKeeper

    seen = []

    def callback(epoch: int, metrics: dict) -> None:
        seen.append(epoch)

    module = torch.nn.Linear(1, 1, bias=False)
    keeper = EpochKeeper("image_AUROC", patience=2, logger=LOGGER, on_epoch=callback)
    stops = []
    for epoch, auroc in enumerate([0.80, 0.90, 0.89, 0.85, 0.84], start=1):
        module.weight.data.fill_(epoch)
        stops.append(keeper.update(epoch, {"image_AUROC": auroc}, module))
    assert stops == [False, False, False, False, True]  # 0.85 and 0.84 are more than 0.02 below 0.90
    assert keeper.is_kept(3) and not keeper.is_kept(2)  # 0.89 is within 0.02 of 0.90, and later
    kept = keeper.restore(module)
    assert kept["epoch"] == 3 and float(module.weight) == 3.0
    assert seen == [1, 2, 3, 4, 5], "the fit options' on_epoch sees every epoch"


def test_the_epoch_reporter_is_scoped_to_its_block():
    """The tuner's reporter reaches the fits run inside ``reporting`` (the train step reads it) and no others."""
    from vad.models import epochs

    def callback(epoch: int, metrics: dict) -> None:
        del epoch, metrics

    assert epochs.reporter() is None
    with epochs.reporting(callback):
        assert epochs.reporter() is callback
    assert epochs.reporter() is None
