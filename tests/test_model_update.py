"""Improving a model from verdicts: the feedback rows, model versions, ``--mode update`` and ``--mode rollback``."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    ROOT,
    load_default_plan,
    make_dataset,
    make_inference_folder,
    set_external,
    step_args,
    texture,
    write_plan,
)
from PIL import Image
from safetensors.numpy import load_file

import main
from alo.errors import DataError, ModelError, PlanError
from alo.model_versions import activate, read_index, recover, register_active
from vad.feedback_rows import add_verdicts, read_verdicts
from vad.models import ModelSpec, entry
from vad.models.base import FitData, FitOptions
from vad.models.factory import build_model
from vad.ood.check import DESCRIPTORS_FILE

LOGGER = logging.getLogger("test")


def _feedback(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["label", "image_path", "verdict_time", "review_id", "pred_label", "anomaly_score"]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


def test_the_latest_verdict_per_image_counts_and_a_bad_file_is_one_line(tmp_path):
    csv = tmp_path / "review" / "feedback.csv"
    _feedback(
        csv,
        [
            ["good", "images/a.png", "2026-12-07T10:00:00+00:00", "a", "bad", 0.7],
            ["bad", "images/b.png", "2026-12-07T10:01:00+00:00", "b", "good", 0.4],
            ["bad", "images/a.png", "2026-12-07T10:02:00+00:00", "a", "bad", 0.7],  # changed mind
        ],
    )
    verdicts = read_verdicts(csv)
    assert list(verdicts["review_id"]) == ["b", "a"] and list(verdicts["label"]) == ["bad", "bad"]
    assert verdicts["file"][1] == str((csv.parent / "images/a.png").resolve())
    pd.DataFrame({"label": ["good"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="lacks the column"):
        read_verdicts(csv)
    with pytest.raises(DataError, match="cannot be read"):
        read_verdicts(tmp_path / "missing.csv")


def test_verdicts_join_training_and_validation_and_leave_the_users_rows_alone(tmp_path):
    folder = tmp_path / "review" / "images"
    folder.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"png")
    samples = pd.DataFrame(
        {
            "_file": ["/d/x.png", "/d/y.png"],
            "_label": ["good", "bad"],
            "_is_ng": [False, True],
            "_split": ["train", "valid"],
        }
    )
    frame = pd.DataFrame({"label": ["good", "bad"], "image_path": ["x.png", "y.png"], "split": ["train", "valid"]})
    verdicts = pd.DataFrame(
        {
            "label": ["good", "bad", "good"],
            "file": [str(folder / "a.png"), str(folder / "b.png"), str(folder / "gone.png")],
            "verdict_time": ["t1", "t2", "t3"],
            "review_id": ["a", "b", "c"],
        }
    )
    readiness = {"ok_class": "good", "y_column": "label", "path_column": "image_path", "train_validate_column": "split"}
    rows = add_verdicts(samples, frame, verdicts, readiness, LOGGER)
    assert rows.ok_files == [str(folder / "a.png")] and rows.ok_ids == ["a"] and rows.ng == 1
    assert list(rows.samples["_split"]) == ["train", "valid", "train", "valid"]
    assert list(rows.frame["split"]) == ["train", "valid", "train", "valid"]
    assert rows.review_ids == ["a", "b"], "the verdict whose image is gone is left out"
    assert len(samples) == 2 and len(frame) == 2, "the run's tables only"


def _models(root, train_id, marker):
    models = root / "train_artifacts" / "models"
    (models / "train").mkdir(parents=True, exist_ok=True)
    (models / "train_run.json").write_text(json.dumps({"train_id": train_id}))
    config = {"training": {"validation": {"auroc": marker}}}
    (models / "train" / "train_config.json").write_text(json.dumps(config))
    return models


def test_versions_are_kept_switched_and_an_interrupted_switch_is_finished(tmp_path):
    with pytest.raises(ModelError, match="no trained model"):
        register_active(tmp_path)
    _models(tmp_path, "run-1", 0.9)
    first = register_active(tmp_path)
    assert first.number == 1 and register_active(tmp_path) == first, "the same train run: no second copy"
    _models(tmp_path, "run-2", 0.95)  # a retrain outside versions
    second = register_active(tmp_path, made_by="update", based_on=1)
    assert second.number == 2 and second.validation_before == {"auroc": 0.9} and second.validation == {"auroc": 0.95}
    assert activate(tmp_path, 1).number == 1
    record = json.loads((tmp_path / "train_artifacts/models/train_run.json").read_text())
    assert record["train_id"] == "run-1" and read_index(tmp_path).active == 1
    with pytest.raises(PlanError, match="versions kept: 1, 2"):
        activate(tmp_path, 7)
    # killed between the two renames: the old folder is put back
    models = tmp_path / "train_artifacts" / "models"
    models.replace(tmp_path / ".alo" / "previous-models")
    recover(tmp_path)
    assert json.loads((models / "train_run.json").read_text())["train_id"] == "run-1"


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """A PatchCore model trained on half the OK images; the other half (and two NG images) as verdicts."""
    root = tmp_path_factory.mktemp("update")
    make_dataset(root / "data" / "train", n_train=24)
    make_inference_folder(root / "data" / "inference", n_ok=3, n_ng=2, seed=4)
    table = pd.read_csv(root / "data/train/train.csv")
    held = table[(table["split"] == "train")].iloc[1::2]
    table.drop(held.index).to_csv(root / "data/train/train.csv", index=False)
    review = root / "review"
    (review / "images").mkdir(parents=True)
    rows = []
    for i, path in enumerate(held["image_path"]):
        shutil.copy(root / "data/train" / path, review / "images" / f"r{i:02d}.png")
        rows.append(["good", f"images/r{i:02d}.png", f"2026-12-07T10:{i:02d}:00+00:00", f"r{i:02d}", "good", 0.3])
    shutil.copy(root / "data/inference/ng_0.png", review / "images/n0.png")
    rows.append(["bad", "images/n0.png", "2026-12-07T11:00:00+00:00", "n0", "bad", 0.9])
    _feedback(review / "feedback.csv", rows)
    plan = copy.deepcopy(load_default_plan())
    set_external(plan, "load_train_data_path", "data/train")
    set_external(plan, "load_inference_data_path", "data/inference")
    step_args(plan, "train", "train").update(
        {"img_size": [64, 64], "batch_size": 8, "model_name": "patchcore", "save_validation_heatmap": False}
    )
    step_args(plan, "inference", "inference").update({"save_anomaly_maps": False, "runtime": "onnxruntime"})
    path = write_plan(root, plan)
    assert main.main(["--mode", "all", "--config", str(path)]) == 0
    return {"root": root, "plan": plan, "path": path, "held": len(held)}


def _scores(line):
    assert main.main(["--mode", "inference", "--config", str(line["path"])]) == 0
    return pd.read_csv(line["root"] / "inference_artifacts/output/output.csv")[["raw_score", "ood_score"]].to_numpy()


def _bank_rows(root):
    return len(load_file(str(root / "train_artifacts/models/train/model.safetensors"))["memory_bank"])


@pytest.mark.slow
def test_update_adds_the_verdicts_as_a_new_version_and_rollback_restores_the_old_scores_exactly(line):
    root = line["root"]
    before, rows_before = _scores(line), _bank_rows(root)
    descriptors_before = len(np.load(root / "train_artifacts/models/train" / DESCRIPTORS_FILE))
    assert main.main(["--mode", "update", "--config", str(line["path"])]) == 0
    index = read_index(root)
    assert index.active == 2 and [v.made_by for v in index.versions] == ["train", "update"]
    second = index.versions[1]
    assert second.data_added == {"ok": line["held"], "ng": 1} and second.based_on == 1
    assert second.validation_before == index.versions[0].validation and second.validation["n_ng"] == 7
    assert _bank_rows(root) > rows_before, "the new images' patches joined the bank"
    config = json.loads((root / "train_artifacts/models/train/train_config.json").read_text())
    assert config["training"]["update"]["incremental"] is True
    ood = root / "train_artifacts/models/train" / DESCRIPTORS_FILE
    assert len(np.load(ood)) == descriptors_before + line["held"], "the check learnt the new images too"
    assert (root / "train_artifacts/models/export/model.onnx").is_file(), "the updated model is exported again"
    updated = _scores(line)
    assert not np.array_equal(updated, before)

    assert main.main(["--mode", "update", "--config", str(line["path"])]) == 0  # nothing new: no version
    assert len(read_index(root).versions) == 2

    assert main.main(["--mode", "rollback", "--version", "1", "--config", str(line["path"])]) == 0
    assert read_index(root).active == 1
    assert np.array_equal(_scores(line), before), "version 1's scores, exactly"
    assert main.main(["--mode", "rollback", "--version", "2", "--config", str(line["path"])]) == 0
    assert np.array_equal(_scores(line), updated)


@pytest.mark.slow
def test_a_killed_update_leaves_the_active_version_as_it_was(line):
    root = line["root"]
    active = read_index(root).active if read_index(root).versions else None
    record = (root / "train_artifacts/models/train_run.json").read_text()
    _feedback(
        root / "review" / "feedback.csv",
        [["good", "images/r00.png", "2026-12-07T12:00:00+00:00", "late", "good", 0.2]],
    )
    command = [sys.executable, str(ROOT / "main.py"), "--mode", "update", "--config", str(line["path"])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + 300
    for text in process.stdout:  # kill it while the train step runs
        if "step 'train' started" in text or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert (root / "train_artifacts/models/train_run.json").read_text() == record
    assert (read_index(root).active if read_index(root).versions else None) == active
    assert main.main(["--mode", "inference", "--config", str(line["path"])]) == 0, "the old model still scores"


def test_rollback_needs_a_version_and_an_unknown_one_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main.parse_args(["--mode", "rollback"])
    with pytest.raises(SystemExit):
        main.parse_args(["--mode", "train", "--version", "2"])
    capsys.readouterr()
    _models(tmp_path, "run-1", 0.9)
    plan = copy.deepcopy(load_default_plan())
    path = write_plan(tmp_path, plan)
    assert main.main(["--mode", "rollback", "--version", "3", "--config", str(path)]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert errors == [
        "ERROR: plan error: there is no model version 3 (versions kept: 1); see model_versions/versions.json"
    ]
    assert main.main(["--mode", "update", "--config", str(path)]) != 0
    assert "no verdicts yet" in capsys.readouterr().err


def test_padim_updated_with_more_images_has_the_gaussians_of_one_fit_on_all_of_them(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i in range(12):
        path = tmp_path / f"t{i}.png"
        Image.fromarray(texture(rng)).save(path)
        files.append(str(path))
    params = entry("padim").params(backbone="mobilenetv2_100", layers=["blocks.2", "blocks.4"])
    spec = ModelSpec("padim", (64, 64), (0.5,) * 3, (0.5,) * 3, params)
    options = FitOptions(batch_size=4, max_epochs=1, seed=0, monitor="image_AUROC")

    def fitted(images):
        torch.manual_seed(0)
        model = build_model(spec, pretrained=True)
        model.fit(FitData(images), FitData([]), options, LOGGER)
        return model

    whole, part = fitted(files), fitted(files[:7])
    assert part.update(FitData(files[7:]), options, LOGGER)
    assert float(part.fit_images) == float(whole.fit_images) == 12
    assert torch.allclose(part.gaussian.mean, whole.gaussian.mean, atol=1e-5)
    assert torch.allclose(part.gaussian.inv_covariance, whole.gaussian.inv_covariance, rtol=1e-3, atol=1e-3)
    images = torch.stack([torch.from_numpy(((texture(rng) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32))])
    assert np.allclose(part.score(images)[0], whole.score(images)[0], rtol=1e-3)
    unknown = fitted(files[:7])
    unknown.fit_images = torch.zeros((), dtype=torch.float64)  # a model saved before the count was kept
    assert not unknown.update(FitData(files[7:]), options, LOGGER)
