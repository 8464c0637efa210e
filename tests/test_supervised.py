"""The supervised mode: cross-fitting never scores an image with a head fitted on it; the fallback; end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import load_default_plan, make_dataset, make_inference_folder, set_external, step_args, write_plan

from vad.supervision import FOLDS, MIN_NG, LinearHead, cross_fit, logistic_head, stratified_folds


def _labelled(n_ok: int, n_ng: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    is_ng = np.r_[np.zeros(n_ok, dtype=bool), np.ones(n_ng, dtype=bool)]
    descriptors = rng.normal(size=(n_ok + n_ng, 4)) + is_ng[:, None] * 1.5
    return descriptors, is_ng


def test_cross_fitting_never_scores_an_image_with_a_head_fitted_on_it() -> None:
    train = np.random.default_rng(1).normal(size=(30, 4))
    valid, is_ng = _labelled(12, 11)
    ids = np.arange(len(valid), dtype=float)  # a last column naming each validation image; training rows get -1
    fitted_on: list[set[int]] = []

    def recording_fitter(descriptors: np.ndarray, labels: np.ndarray) -> LinearHead:
        seen = {int(i) for i in descriptors[:, -1] if i >= 0}
        fitted_on.append(seen)
        assert labels[descriptors[:, -1] < 0].sum() == 0  # training rows are OK
        # a head whose offset names the fit it came from: its number, so each score traces back to one fit
        weights = np.zeros(descriptors.shape[1])
        return LinearHead(weights, float(len(fitted_on) - 1))

    raw = np.random.default_rng(2).normal(10.0, 1.0, len(valid))
    named_train, named_valid = np.c_[train, -np.ones(len(train))], np.c_[valid, ids]
    result = cross_fit(named_train, named_valid, is_ng, raw, seed=3, fitter=recording_fitter)
    assert len(fitted_on) == FOLDS + 1  # one head per fold, then the kept head on everything
    assert fitted_on[-1] == set(range(len(valid)))
    # each fold head's offset is its own number, so a score names the head that gave it: the head of the image's fold
    offsets = result.scores - raw
    scale = result.head.bias / FOLDS  # the kept head (number FOLDS), scaled as the fold heads were
    assert scale > 0
    assert np.allclose(offsets / scale, result.folds)
    for image in range(len(valid)):
        assert image not in fitted_on[int(result.folds[image])], "scored by a head fitted on it"
    assert set(result.folds[is_ng]) == set(range(FOLDS)) and set(result.folds[~is_ng]) == set(range(FOLDS))


def test_folds_are_stratified_and_seeded() -> None:
    is_ng = np.r_[np.zeros(20, dtype=bool), np.ones(10, dtype=bool)]
    folds = stratified_folds(is_ng, FOLDS, seed=7)
    assert np.array_equal(folds, stratified_folds(is_ng, FOLDS, seed=7))
    assert not np.array_equal(folds, stratified_folds(is_ng, FOLDS, seed=8))
    for fold in range(FOLDS):
        assert (folds[is_ng] == fold).sum() == 2 and (folds[~is_ng] == fold).sum() == 4


def test_logistic_head_is_the_regression_on_raw_descriptors() -> None:
    from sklearn.linear_model import LogisticRegression

    descriptors, is_ng = _labelled(40, 20)
    descriptors = descriptors * [1.0, 10.0, 0.1, 3.0] + [0.0, 5.0, -2.0, 1.0]
    head = logistic_head(descriptors, is_ng)
    mean, std = descriptors.mean(0), descriptors.std(0)
    reference = LogisticRegression(C=0.01, class_weight="balanced", max_iter=5000)
    reference.fit((descriptors - mean) / std, is_ng)
    assert np.allclose(head.offsets(descriptors), reference.decision_function((descriptors - mean) / std), atol=1e-9)


def test_cross_fit_refuses_too_few_ng_images() -> None:
    valid, is_ng = _labelled(10, FOLDS - 1)
    with pytest.raises(ValueError, match="NG"):
        cross_fit(valid, valid, is_ng, np.zeros(len(valid)), seed=0)


def _log_lines(root: Path, start: str) -> list[str]:
    log = (root / "train_artifacts" / "log" / "pipeline.log").read_text(encoding="utf-8")
    messages = [line.split("] ", 1)[1] for line in log.splitlines() if "] " in line]
    return [message for message in messages if message.startswith(start)]


def _train(root: Path, n_ng: int, **train: object) -> dict:
    import main

    make_dataset(root / "data" / "train", n_train=24, n_valid_ok=10, n_valid_ng=n_ng)
    make_inference_folder(root / "data" / "inference", n_ok=3, n_ng=2)
    plan = copy.deepcopy(load_default_plan())
    set_external(plan, "load_train_data_path", "data/train")
    set_external(plan, "load_inference_data_path", "data/inference")
    args = {"img_size": [64, 64], "batch_size": 8, "model_name": "patchcore", "supervised": True, **train}
    step_args(plan, "train", "train").update(args)
    path = write_plan(root, plan)
    assert main.main(["--mode", "all", "--config", str(path)]) == 0
    return json.loads((root / "train_artifacts" / "models" / "train" / "train_config.json").read_text())


@pytest.mark.slow
def test_supervised_patchcore_trains_exports_and_scores_through_main(tmp_path: Path) -> None:
    config = _train(tmp_path, MIN_NG)
    assert config["training"]["supervised"] == {"used": True, "folds": FOLDS, "ng_images": MIN_NG}
    assert len(_log_lines(tmp_path, "supervised: head fitted")) == 1
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "train_artifacts" / "models" / "train" / "model.safetensors"))
    assert state["head_weights"].numel() > 0 and state["head_bias"].numel() == 1
    from vad.export.runtime import read_manifest

    manifest = read_manifest(tmp_path / "train_artifacts" / "models" / "train")
    assert manifest is not None
    # the parity gate compares the exported runtime's scores with the model's: they agree only with the head
    assert all(entry["accepted"] for entry in manifest["exports"].values()), manifest
    output = pd.read_csv(tmp_path / "inference_artifacts" / "output" / "output.csv")
    assert len(output) == 5 and output["anomaly_score"].notna().all()


@pytest.mark.slow
def test_too_few_ng_images_fall_back_to_unsupervised_with_one_line(tmp_path: Path) -> None:
    config = _train(tmp_path, MIN_NG - 4, export=[])
    assert config["training"]["supervised"]["used"] is False
    lines = _log_lines(tmp_path, "supervised:")
    assert len(lines) == 1 and "trains unsupervised" in lines[0] and f"at least {MIN_NG}" in lines[0]
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "train_artifacts" / "models" / "train" / "model.safetensors"))
    assert state["head_weights"].numel() == 0


def test_patchcore_keeps_the_descriptors_of_its_training_images(tmp_path: Path) -> None:
    """The head learns from the descriptors the bank was built from: the same as scoring those images gives."""
    import logging

    import torch

    from vad.models import ModelSpec, entry
    from vad.models.base import FitData, FitOptions
    from vad.models.factory import build_model
    from vad.supervised_fit import descriptors

    folder = make_dataset(tmp_path, n_train=8, n_valid_ok=0, n_valid_ng=0, size=32)
    files = sorted(str(p) for p in (folder / "good").glob("*.png"))
    params = entry("patchcore").params(backbone="resnet18", layers=["layer2", "layer3"], coreset_sampling_ratio=0.5)
    torch.manual_seed(0)
    model = build_model(ModelSpec("patchcore", (32, 32), (0.5,) * 3, (0.5,) * 3, params), pretrained=False)
    logger = logging.getLogger("assets.test")
    assert model.training_descriptors() is None
    options = FitOptions(batch_size=4, max_epochs=1, seed=0, monitor="loss")
    model.fit(FitData(files), FitData(files[:2]), options, logger)
    kept = model.training_descriptors()
    assert kept is not None and kept.shape == (len(files), 2 * model.memory_bank.shape[1])
    assert np.allclose(kept, descriptors(model, files, 3, logger, "training"), rtol=1e-4, atol=1e-5)
