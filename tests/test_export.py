"""Exported models: the parity gate at export, refused exports, and inference from the export without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT, set_external, step_args, write_plan

import main
from assets.vad.exported import choose_runtime, read_manifest
from assets.vad.models import MODELS
from assets.vad.models import export as export_module

# A process that cannot import torch (nor what needs it), then runs main.py: the slim runtime's import graph.
NO_TORCH = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm", "anomalib", "lightning", "safetensors"):
            raise ImportError(f"{name} is not installed in this environment")
        return None
sys.meta_path.insert(0, Blocked())
import main
code = main.main(sys.argv[1:])
assert "torch" not in sys.modules
sys.exit(code)
"""


def _train(project, model_name: str, **train_args) -> dict:
    root, plan = project["root"], project["plan"]
    args = step_args(plan, "train", "train")
    args.update({"model_name": model_name, "max_epochs": 1, **train_args})
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    return {"root": root, "plan": plan, "path": path, "models": root / "train_artifacts" / "models"}


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_fp32_export_of_each_model_passes_its_gate(project, model_name):
    trained = _train(project, model_name)
    export = trained["models"] / "export"
    manifest = read_manifest(trained["models"] / "train")
    parity = json.loads((export / "parity.json").read_text())
    assert manifest["accepted"] and parity["accepted"], parity.get("reason")
    assert (export / "model.onnx").is_file()
    assert parity["images"] == 14  # every validation image of the sample data
    assert parity["labels_identical"] is True
    assert parity["normalized_max_abs_difference"] <= 1e-3
    assert parity["raw_max_relative_difference"] <= 1e-3
    assert {"torch_images_per_s", "export_images_per_s", "map_max_abs_difference"} <= set(parity)


def test_a_broken_export_is_refused_and_training_still_succeeds(project, monkeypatch):
    original = export_module.ScoringGraph.forward

    def without_std(self, pixels):  # the classic export bug: normalisation left out
        self.std.fill_(1.0)
        return original(self, pixels)

    monkeypatch.setattr(export_module.ScoringGraph, "forward", without_std)
    trained = _train(project, "patchcore")
    manifest = read_manifest(trained["models"] / "train")
    assert manifest["accepted"] is False
    assert "differ" in manifest["reason"]
    assert not (trained["models"] / "export" / "model.onnx").exists(), "a refused export leaves no graph"
    assert (trained["root"] / "train_artifacts" / "models" / "train" / "model.safetensors").is_file()
    assert choose_runtime(trained["models"] / "train", "auto") == "torch"


def test_runtime_onnxruntime_without_an_export_is_one_clear_error(project, capsys):
    trained = _train(project, "patchcore", export=[])
    assert not (trained["models"] / "export").exists()
    step_args(trained["plan"], "inference", "inference")["runtime"] = "onnxruntime"
    path = write_plan(trained["root"], trained["plan"])
    assert main.main(["--mode", "inference", "--config", str(path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("ERROR: model error: runtime onnxruntime needs an exported model")
    assert "--mode export" in line
    assert main.main(["--mode", "export", "--config", str(path)]) == 0  # on demand, then it runs
    assert read_manifest(trained["models"] / "train")["accepted"] is True
    assert main.main(["--mode", "inference", "--config", str(path)]) == 0


def test_exported_model_tar_gz_scores_without_torch_as_torch_does(project, tmp_path):
    saved = tmp_path / "saved"
    set_external(project["plan"], "save_train_artifacts_path", str(saved))
    trained = _train(project, "patchcore")
    root, plan = trained["root"], trained["plan"]
    assert main.main(["--mode", "inference", "--config", str(trained["path"])]) == 0
    torch_rows = pd.read_csv(root / "inference_artifacts/output/output.csv")
    set_external(plan, "load_model_path", str(saved / "model.tar.gz"))  # the archive an edge device gets
    step_args(plan, "inference", "inference")["runtime"] = "onnxruntime"
    path = write_plan(root, plan, "edge_plan.yaml")
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "--mode", "inference", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(onnxruntime)" in done.stderr
    edge_rows = pd.read_csv(root / "inference_artifacts/output/output.csv")
    assert list(edge_rows["image_path"]) == list(torch_rows["image_path"])
    assert list(edge_rows["pred_label"]) == list(torch_rows["pred_label"])
    assert (edge_rows["anomaly_score"] - torch_rows["anomaly_score"]).abs().max() <= 1e-3


def test_auto_takes_torch_where_it_is_installed(project):
    trained = _train(project, "patchcore")
    folder = trained["models"] / "train"
    assert read_manifest(folder)["accepted"]
    assert choose_runtime(folder, "auto") == "torch"  # the slim install (no torch) takes the export: tested below
    assert choose_runtime(folder, "onnxruntime") == "onnxruntime"


def test_slim_install_without_torch_scores_model_tar_gz_as_torch_does(project, tmp_path_factory):
    """requirements-edge.txt in a fresh venv (no torch at all) runs main.py --mode inference on model.tar.gz."""
    venv = tmp_path_factory.mktemp("edge") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-r", str(ROOT / "requirements-edge.txt")], check=True, timeout=600, capture_output=True)
    probe = [str(venv / "bin/python"), "-c", "import importlib.util as u; assert u.find_spec('torch') is None"]
    subprocess.run(probe, check=True, timeout=60)
    saved = tmp_path_factory.mktemp("saved")
    set_external(project["plan"], "save_train_artifacts_path", str(saved))
    trained = _train(project, "patchcore")  # its bank search runs in numpy and faiss there
    root, plan = trained["root"], trained["plan"]
    assert main.main(["--mode", "inference", "--config", str(trained["path"])]) == 0
    torch_rows = pd.read_csv(root / "inference_artifacts/output/output.csv")
    set_external(plan, "load_model_path", str(saved / "model.tar.gz"))
    step_args(plan, "inference", "inference")["runtime"] = "auto"  # no torch there: auto takes the export
    path = write_plan(root, plan, "edge_plan.yaml")
    command = [str(venv / "bin/python"), str(ROOT / "main.py"), "--mode", "inference", "--config", str(path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(onnxruntime)" in done.stderr
    edge_rows = pd.read_csv(root / "inference_artifacts/output/output.csv")
    assert list(edge_rows["pred_label"]) == list(torch_rows["pred_label"])
    assert (edge_rows["anomaly_score"] - torch_rows["anomaly_score"]).abs().max() <= 1e-3


def test_patchcore_tail_with_an_inverted_file_equals_the_torch_scorer(project, monkeypatch):
    """The exported runtime's bank search (bounds, exact peaks, inverted-file maps) gives the torch scorer's."""
    from assets.vad.models.factory import load
    from assets.vad.models.patchcore import search, settings

    trained = _train(project, "patchcore", export=[])
    monkeypatch.setattr(search, "BOUND_MIN_ROWS", 100)  # the small test bank gets an inverted file
    for module in (search, settings):
        monkeypatch.setattr(module, "EXACT_MAP_ROWS", 50)  # and its maps come from it, in both runtimes
    model = load(trained["models"] / "train")
    assert model.model.search.ivf is not None
    images = sorted(str(p) for p in (trained["root"] / "data" / "train").rglob("*.png"))
    folder = trained["models"] / "train"
    manifest = export_module.export_model(model.model, model.spec, model.calibration, images, folder)
    parity = json.loads((trained["models"] / "export" / "parity.json").read_text())
    assert manifest["accepted"] and manifest["tail"] == "patchcore", parity
    assert parity["raw_max_relative_difference"] <= 1e-5
    assert parity["map_max_abs_difference"] <= 1e-3, "maps from the same inverted file (up to float rounding)"
    assert (trained["models"] / "export" / "patchcore_tail.npz").is_file()
