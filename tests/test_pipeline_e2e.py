"""End to end through main.py: train -> inference for both models on tiny generated images."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pandas as pd
import pytest
import yaml
from conftest import ROOT, make_inference_folder, set_external, step_args, write_plan

import main

pytestmark = pytest.mark.slow  # end-to-end: make test-all (CI) runs these, make test does not

TRAIN_FILES = [
    "models/readiness/readiness_config.json",
    "models/train/model.safetensors",
    "models/train/train_config.json",
    "output/output.csv",
    "output/validation_score.csv",
    "output/validation_confusion_matrix.csv",
    "output/validation_classification_report.json",
    "extra_output/train/threshold_test_result.csv",
    "extra_output/train/threshold_test_result.png",
    "log/experimental_history.json",
    "log/pipeline.log",
    "log/process.log",
]
INFERENCE_FILES = [
    "output/output.csv",
    "score/inference_summary.yaml",
    "log/experimental_history.json",
    "log/pipeline.log",
    "log/process.log",
]


@pytest.mark.parametrize("model_name", ["patchcore", "fastflow"])
def test_train_then_inference(project, model_name):
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "train")["model_name"] = model_name
    path = write_plan(root, plan)
    assert main.main(["--mode", "all", "--config", str(path)]) == 0
    train = root / "train_artifacts"
    for name in TRAIN_FILES:
        assert (train / name).is_file(), name
    heatmaps = list((train / "extra_output/train/images").glob("*.png"))
    assert heatmaps, "validation heatmaps of NG images"
    assert all(p.name.split("_")[0] in {"good", "bad"} for p in heatmaps)
    score = pd.read_csv(train / "output/validation_score.csv").iloc[0]
    assert score["auroc"] >= 0.9, f"{model_name} should separate blotches from texture, got {score['auroc']}"
    validation = pd.read_csv(train / "output/output.csv")
    assert {"label", "image_path", "split", "anomaly_score", "raw_score", "pred_label", "certainty"} <= set(validation)
    assert validation["anomaly_score"].between(0, 1).all()
    config = json.loads((train / "models/train/train_config.json").read_text())
    assert config["model"]["model_name"] == model_name
    assert "package" in config["training"]["weights_source"]

    inference = root / "inference_artifacts"
    for name in INFERENCE_FILES:
        assert (inference / name).is_file(), name
    output = pd.read_csv(inference / "output/output.csv")
    assert len(output) == 5
    assert set(output["pred_label"]) <= {"good", "bad"}
    ng_rows = output[output["image_path"].str.startswith("ng_")]
    ok_rows = output[output["image_path"].str.startswith("ok_")]
    assert ng_rows["anomaly_score"].min() > ok_rows["anomaly_score"].max()
    summary = yaml.safe_load((inference / "score/inference_summary.yaml").read_text())
    counts = dict(item.split(":") for item in summary["result"].split(","))
    assert sum(int(v) for v in counts.values()) == 5
    predicted_ng = int((output["pred_label"] == "bad").sum())
    assert int(counts["bad"]) == predicted_ng
    assert f"{predicted_ng} bad" in summary["note"], "the note counts predictions, not true labels"
    assert len(list((inference / "extra_output/inference/images").glob("*.png"))) == 5
    record = json.loads((inference / "log/experimental_history.json").read_text())
    train_record = json.loads((train / "log/experimental_history.json").read_text())
    assert record["train_id"] == train_record["id"]
    assert {"data_id", "param_id", "code_id"} <= set(record)


def test_single_image_inference_and_model_archive(project, tmp_path_factory):
    root, plan = project["root"], project["plan"]
    exported = tmp_path_factory.mktemp("exported")
    set_external(plan, "save_train_artifacts_path", str(exported))
    assert main.main(["--mode", "train", "--config", str(write_plan(root, plan))]) == 0
    assert (exported / "model.tar.gz").is_file() and (exported / "train_artifacts.tar.gz").is_file()
    with tarfile.open(exported / "model.tar.gz") as tar:
        names = tar.getnames()
    assert "train/model.safetensors" in names
    assert "export/model.onnx" in names, "the exported model travels with it"
    assert "export/model.xml" in names and "export/model.bin" in names
    data_only = (".json", ".safetensors", ".onnx", ".npz", ".npy", ".xml", ".bin")  # numpy files: allow_pickle=False
    assert all(name.endswith(data_only) for name in names), "data only: no pickles"

    elsewhere = tmp_path_factory.mktemp("edge")
    single = make_inference_folder(elsewhere / "one", n_ok=0, n_ng=1)
    edge_plan = dict(plan)
    edge_plan["external_path"] = [{"load_inference_data_path": str(single)}, {"load_model_path": str(exported)}]
    path = write_plan(elsewhere, edge_plan)
    assert main.main(["--mode", "inference", "--config", str(path)]) == 0
    summary = yaml.safe_load((elsewhere / "inference_artifacts/score/inference_summary.yaml").read_text())
    assert summary["result"] == "bad"
    assert summary["file_path"].endswith("ng_0.png")
    output = pd.read_csv(elsewhere / "inference_artifacts/output/output.csv")
    assert summary["score"] == pytest.approx(round(output["certainty"].iloc[0], 2))


def test_second_run_backs_up_previous_artifacts(project):
    root, plan = project["root"], project["plan"]
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    first_id = json.loads((root / "train_artifacts/log/experimental_history.json").read_text())["id"]
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    backup = root / "history" / "train" / first_id
    assert (backup / "models/train/model.safetensors").is_file()
    assert (backup / "log/experimental_plan.yaml").is_file()


@pytest.mark.parametrize("model_name", ["patchcore", "fastflow"])
def test_same_seed_gives_identical_scores(project, model_name):
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "train")["model_name"] = model_name
    path = write_plan(root, plan)
    scores = []
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    scores.append(pd.read_csv(root / "train_artifacts/output/output.csv")["raw_score"].tolist())
    command = [sys.executable, str(ROOT / "main.py"), "--mode", "train", "--config", str(path)]
    assert subprocess.run(command, capture_output=True, check=False, timeout=900).returncode == 0
    scores.append(pd.read_csv(root / "train_artifacts/output/output.csv")["raw_score"].tolist())
    assert scores[0] == scores[1], "a second process with the same plan, data and seed gives the same scores"


def test_labelled_inference_scores_and_counts_predictions(project):
    root, plan = project["root"], project["plan"]
    folder = root / "data/inference"
    names = sorted(p.name for p in folder.glob("*.png"))
    labels = ["bad" if name.startswith("ng_") else "good" for name in names]
    pd.DataFrame({"label": labels, "image_path": names}).to_csv(folder / "inference.csv", index=False)
    assert main.main(["--mode", "all", "--config", str(write_plan(root, plan))]) == 0
    inference = root / "inference_artifacts"
    scores = pd.read_csv(inference / "score/inference_score.csv").iloc[0]
    assert scores["n_ng"] == 2 and scores["n_ok"] == 3
    assert scores["auroc"] == 1.0
    output = pd.read_csv(inference / "output/output.csv")
    assert list(output["label"]) == labels
    tables = sorted(p.name for p in (inference / "output").glob("*.csv"))
    assert tables == ["output.csv"], "the Edge SDK's upload needs exactly one table in output/"
    summary = yaml.safe_load((inference / "score/inference_summary.yaml").read_text())
    predicted_ng = int((output["pred_label"] == "bad").sum())
    assert summary["result"] == f"good:{5 - predicted_ng},bad:{predicted_ng}"
    assert summary["note"].startswith(f"patchcore: 5 image(s), {predicted_ng} bad")


def test_fastflow_over_the_feature_cache_limit_extracts_every_epoch_with_the_same_result(project, monkeypatch):
    from vad.models.fastflow import model as fastflow

    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "train")["model_name"] = "fastflow"
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    cached = pd.read_csv(root / "train_artifacts/output/output.csv")["raw_score"].tolist()
    assert "backbone features cached" in (root / "train_artifacts/log/pipeline.log").read_text()
    monkeypatch.setattr(fastflow, "FEATURE_CACHE_LIMIT", 0)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    log = (root / "train_artifacts/log/pipeline.log").read_text()
    assert "extracting them every epoch" in log and "backbone features cached" not in log
    assert pd.read_csv(root / "train_artifacts/output/output.csv")["raw_score"].tolist() == cached


def test_partly_labelled_inference_scores_every_row_and_measures_the_labelled_ones(project):
    from sklearn.metrics import roc_auc_score

    root, plan = project["root"], project["plan"]
    folder = root / "data/inference"
    names = sorted(p.name for p in folder.glob("*.png"))  # ng_0, ng_1, ok_0, ok_1, ok_2
    labels = ["bad", "", "good", "", "good"]
    pd.DataFrame({"label": labels, "image_path": names}).to_csv(folder / "inference.csv", index=False)
    assert main.main(["--mode", "all", "--config", str(write_plan(root, plan))]) == 0
    inference = root / "inference_artifacts"
    output = pd.read_csv(inference / "output/output.csv")
    assert len(output) == 5 and output["pred_label"].notna().all()
    scores = pd.read_csv(inference / "score/inference_score.csv").iloc[0]
    assert (scores["n_ng"], scores["n_ok"]) == (1, 2)
    labelled = output["label"].notna()
    expected = roc_auc_score(output["label"][labelled] == "bad", output["raw_score"][labelled])
    assert scores["auroc"] == pytest.approx(expected), "AUROC on raw scores, not the clipped anomaly_score"
    assert "labels on 3 of 5 rows" in (inference / "log/pipeline.log").read_text()
