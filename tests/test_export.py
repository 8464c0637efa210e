"""Exported models: the parity gate at export, refused exports, and inference from the export without torch."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, set_external, step_args, write_plan

import edge_install
import main
from vad.export import gates as gates_module
from vad.export import int8 as int8_module
from vad.export import trace as trace_module
from vad.export import writer as export_module
from vad.export.runtime import choose_runtime, read_manifest, usable_kind
from vad.models import MODELS

pytestmark = pytest.mark.slow  # end-to-end: make test-all (CI) runs these, make test does not

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
    trained = _train(project, model_name)  # the default formats: OpenVINO and ONNX, fp32
    export = trained["models"] / "export"
    manifest = read_manifest(trained["models"] / "train")
    parities = json.loads((export / "parity.json").read_text())
    assert manifest["accepted"] and set(manifest["exports"]) == {"openvino", "onnx"}
    for name, graph in (("onnx", "model.onnx"), ("openvino", "model.xml")):
        parity = parities[name]
        assert manifest["exports"][name]["accepted"] and parity["accepted"], parity.get("reason")
        assert (export / graph).is_file()
        assert parity["images"] == 14  # every validation image of the sample data
        assert parity["labels_identical"] is True
        assert parity["normalized_max_abs_difference"] <= 1e-3
        assert parity["raw_max_relative_difference"] <= 1e-3
        speed = {"torch_images_per_s", "export_images_per_s", "torch_one_image_ms", "export_one_image_ms"}
        assert speed | {"map_max_abs_difference"} <= set(parity)
    assert (export / "model.bin").stat().st_size > 4 * 10_000, "fp32 weights (not compressed to fp16)"


def test_a_broken_export_is_refused_and_training_still_succeeds(project, monkeypatch):
    original = trace_module.ScoringGraph.forward

    def without_std(self, pixels):  # the classic export bug: normalisation left out
        self.std.fill_(1.0)
        return original(self, pixels)

    monkeypatch.setattr(trace_module.ScoringGraph, "forward", without_std)
    trained = _train(project, "patchcore")
    manifest = read_manifest(trained["models"] / "train")
    assert manifest["accepted"] is False
    assert "differ" in manifest["reason"]
    assert all("differ" in entry["reason"] for entry in manifest["exports"].values())
    for graph in ("model.onnx", "model.xml", "model.bin", "patchcore_tail.npz"):
        assert not (trained["models"] / "export" / graph).exists(), "a refused export leaves no graph"
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
    manifest = read_manifest(trained["models"] / "train")
    assert manifest["accepted"] is True and set(manifest["exports"]) == {"openvino", "onnx"}
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


def _set_speeds(folder, name: str, torch_ms: float, export_ms: float, torch_per_s: float, export_per_s: float):
    path = folder.parent / "export" / "parity.json"
    parities = json.loads(path.read_text())
    parities[name].update(
        torch_one_image_ms=torch_ms, export_one_image_ms=export_ms,
        torch_images_per_s=torch_per_s, export_images_per_s=export_per_s,
    )  # fmt: skip
    path.write_text(json.dumps(parities))


def test_auto_takes_an_export_only_where_the_gate_measured_it_faster_than_torch(project):
    trained = _train(project, "patchcore")
    folder = trained["models"] / "train"
    assert read_manifest(folder)["accepted"]
    for name in ("openvino", "onnx"):
        _set_speeds(folder, name, 40.0, 50.0, 30.0, 20.0)  # slower than torch
    assert choose_runtime(folder, "auto") == "torch"
    _set_speeds(folder, "onnx", 40.0, 30.0, 30.0, 40.0)  # ONNX faster at both
    assert choose_runtime(folder, "auto") == "onnxruntime"
    _set_speeds(folder, "openvino", 40.0, 30.0, 30.0, 25.0)  # OpenVINO faster for one image, slower in batches
    assert choose_runtime(folder, "auto") == "onnxruntime"
    _set_speeds(folder, "openvino", 40.0, 20.0, 30.0, 50.0)
    assert choose_runtime(folder, "auto") == "openvino"  # OpenVINO before ONNX Runtime when both are faster
    assert choose_runtime(folder, "onnxruntime") == "onnxruntime"
    assert choose_runtime(folder, "torch") == "torch"


def test_a_manifest_of_the_first_layout_reads_as_one_onnx_export(tmp_path):
    folder = tmp_path / "models" / "train"
    (tmp_path / "models" / "export").mkdir(parents=True)
    old = {"format": "onnx", "precision": "fp32", "accepted": False, "reason": "1 of 14 validation label(s) differ"}
    (tmp_path / "models" / "export" / "manifest.json").write_text(json.dumps(old))
    manifest = read_manifest(folder)
    assert manifest["exports"] == {"onnx": {"file": "model.onnx", "precision": "fp32", "accepted": False,
                                            "reason": old["reason"]}}  # fmt: skip
    assert choose_runtime(folder, "auto") == "torch"


def test_openvino_runtime_scores_as_torch_does(project):
    trained = _train(project, "fastflow", export=["openvino"])
    root, plan = trained["root"], trained["plan"]
    assert main.main(["--mode", "inference", "--config", str(trained["path"])]) == 0
    torch_rows = pd.read_csv(root / "inference_artifacts/output/output.csv")
    step_args(plan, "inference", "inference")["runtime"] = "openvino"
    path = write_plan(root, plan, "openvino_plan.yaml")
    assert main.main(["--mode", "inference", "--config", str(path)]) == 0
    log = (root / "inference_artifacts/log/pipeline.log").read_text()
    assert "(openvino)" in log
    rows = pd.read_csv(root / "inference_artifacts/output/output.csv")
    assert list(rows["pred_label"]) == list(torch_rows["pred_label"])
    assert (rows["anomaly_score"] - torch_rows["anomaly_score"]).abs().max() <= 1e-3
    step_args(plan, "inference", "inference")["runtime"] = "onnxruntime"  # exported for OpenVINO only
    path = write_plan(root, plan, "onnx_plan.yaml")
    assert main.main(["--mode", "inference", "--config", str(path)]) == 2


def test_int8_that_fails_its_fidelity_gate_is_refused_with_its_figures(project, monkeypatch):
    monkeypatch.setattr(gates_module, "MIN_RANK_CORRELATION", 1.5)  # no int8 graph can pass: the refusal path
    trained = _train(project, "fastflow", export=["openvino"], precision="int8")
    export = trained["models"] / "export"
    manifest = read_manifest(trained["models"] / "train")
    entry = manifest["exports"]["openvino_int8"]
    parity = json.loads((export / "parity.json").read_text())["openvino_int8"]
    assert entry["accepted"] is False
    assert [attempt["scope"] for attempt in parity["attempts"]] == list(int8_module.INT8_SCOPES), "every scope tried"
    held_out = parity["held_out_training_images"]
    assert held_out == 6 and parity["validation_images"] == 14 and parity["images"] == 20, parity
    assert entry["reason"].startswith("quantising the graph: its scores rank the 20 gate images with correlation ")
    assert "quantising the backbone: its scores rank" in entry["reason"]
    assert "quantising the graph but its stem: its scores rank" in entry["reason"]
    assert (
        "quantising the dense convolutions but the stem: its scores rank the 20 gate images with correlation "
        in (entry["reason"])
    )
    assert f"correlation {parity['rank_correlation']:.4f} to fp32's (at least 1.5 needed)" in entry["reason"]
    for attempt in parity["attempts"]:  # each attempt's fidelity, reported
        assert -1.0 <= attempt["rank_correlation"] <= 1.0 and attempt["largest_difference"] >= 0.0
    # the labelled figures stay as information, with the resolution 8 OK x 6 NG validation images allow
    assert parity["n_ok"] == 8 and parity["n_ng"] == 6 and parity["auroc_resolution"] == pytest.approx(1 / 48)
    assert 0.0 <= parity["fp32_auroc"] <= 1.0 and 0.0 <= parity["int8_auroc"] <= 1.0
    assert not (export / "model_int8.xml").exists() and not (export / "calibration_int8.json").exists()
    assert manifest["exports"]["openvino"]["accepted"], "the fp32 graph stays"
    assert usable_kind(trained["models"] / "train", "openvino").name == "openvino"


def _scaled_scores(model, factor: float):
    """The OpenVINO graph with its ``scores`` output multiplied by ``factor`` (a damaged graph)."""
    import openvino.opset13 as ops

    result = next(output for output in model.outputs if "scores" in output.get_names()).get_node()
    source = result.input_value(0)
    scaled = ops.multiply(source, ops.constant(np.float32(factor)))
    names = source.get_tensor().get_names()
    source.get_tensor().set_names(set())
    scaled.output(0).get_tensor().set_names(names)
    result.input(0).replace_source_output(scaled.output(0))
    model.validate_nodes_and_infer_types()
    return model


def test_a_damaged_int8_graph_is_refused_by_the_fidelity_gate(project, monkeypatch):
    """An int8 graph whose scores are scaled by 1.3 ranks every image as fp32 does, yet is refused."""
    original = int8_module.quantize_int8

    def damaged(model, images, size, scope="graph"):
        return _scaled_scores(original(model, images, size, scope), 1.3)

    monkeypatch.setattr(int8_module, "quantize_int8", damaged)
    monkeypatch.setattr(gates_module, "MIN_RANK_CORRELATION", -1.0)  # only the score difference can refuse it
    trained = _train(project, "fastflow", export=["openvino"], precision="int8")
    parity = json.loads((trained["models"] / "export" / "parity.json").read_text())["openvino_int8"]
    assert not parity["accepted"] and len(parity["attempts"]) == len(int8_module.INT8_SCOPES)
    for attempt in parity["attempts"]:
        assert attempt["largest_difference"] > 0.05 and "a normalised score differs from fp32's by" in attempt["reason"]
    assert not (trained["models"] / "export" / "model_int8.xml").exists()


def _conv_inputs_quantised(model) -> dict[str, bool]:
    """Each convolution of an OpenVINO graph -> whether its activation input comes through a FakeQuantize."""
    found = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            source = op.input_value(0).get_node()
            found[f"{op.get_type_name()} {op.get_friendly_name()}"] = source.get_type_name() == "FakeQuantize"
    return found


def test_each_int8_scope_keeps_its_part_of_the_graph_in_fp32(tmp_path):
    """graph: every convolution int8; backbone: the scoring after it fp32; dense: the depthwise ones fp32 too."""
    import torch
    from PIL import Image
    from torch import nn

    from vad.export.runtime import import_openvino

    class Scorer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                nn.Conv2d(8, 8, 1), nn.ReLU(),
            )  # fmt: skip
            self.head = nn.Conv2d(8, 1, 1)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(pixels.permute(0, 3, 1, 2).float() / 255.0)).amax(dim=(1, 2, 3))

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scorer = Scorer()

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.scorer(pixels)

    torch.manual_seed(0)
    onnx_file = tmp_path / "tiny.onnx"
    example = torch.zeros(1, 16, 16, 3, dtype=torch.uint8)
    torch.onnx.export(Graph().eval(), (example,), str(onnx_file), dynamo=False, input_names=["pixels"])
    rng = np.random.default_rng(0)
    files = []
    for k in range(8):
        files.append(str(tmp_path / f"ok_{k}.png"))
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(files[-1])
    model = import_openvino().Core().read_model(str(onnx_file))
    seen = {scope: _conv_inputs_quantised(int8_module.quantize_int8(model, files, (16, 16), scope))
            for scope in int8_module.INT8_SCOPES}  # fmt: skip
    names = sorted(seen["graph"])
    head = next(name for name in names if "/scorer/head/" in name)
    depthwise = next(name for name in names if name.startswith("GroupConvolution"))
    assert all(seen["graph"].values()), seen["graph"]
    assert not seen["backbone"][head] and seen["backbone"][depthwise]
    assert not seen["dense"][head] and not seen["dense"][depthwise]
    assert sum(seen["dense"].values()) == 2, "the two dense backbone convolutions stay int8"
    assert int8_module.scope_differs(model, "dense") and int8_module.scope_differs(model, "backbone")
    plain = tmp_path / "plain.onnx"  # no grouped convolution, nothing after a backbone: both later scopes skipped
    torch.onnx.export(Graph().scorer.backbone[:2].eval(), (torch.zeros(1, 3, 8, 8),), str(plain), dynamo=False)
    plain_model = import_openvino().Core().read_model(str(plain))
    assert not int8_module.scope_differs(plain_model, "dense")
    assert not int8_module.scope_differs(plain_model, "backbone")


def test_int8_that_passes_its_gate_scores_with_the_fp32_calibration(project, monkeypatch):
    monkeypatch.setattr(gates_module, "MIN_RANK_CORRELATION", -1.0)  # whatever this tiny model's fidelity, keep it
    monkeypatch.setattr(gates_module, "MAX_SCORE_DIFFERENCE", 1.0)
    monkeypatch.setattr(gates_module, "OOD_TOLERANCE", 1e9)  # one epoch at 64 px: its descriptors move a lot
    trained = _train(project, "fastflow", export=["openvino"], precision="int8")
    assert not multiprocessing.active_children(), "no telemetry process forked by the converter or NNCF"
    root, plan, folder = trained["root"], trained["plan"], trained["models"] / "train"
    export = trained["models"] / "export"
    parity = json.loads((export / "parity.json").read_text())["openvino_int8"]
    assert parity["accepted"], parity
    assert parity["scope"] == "graph" and len(parity["attempts"]) == 1, "the whole graph passed: no second try"
    assert parity["images"] == 20 and parity["n_ng"] == 6 and parity["ood_flag_changes_outside_tolerance"] == 0
    assert not (export / "calibration_int8.json").exists(), "the fp32 calibration is the int8 graph's"
    fp32 = json.loads((folder / "calibration.json").read_text())
    step_args(plan, "inference", "inference")["runtime"] = "openvino"
    path = write_plan(root, plan, "int8_plan.yaml")
    assert main.main(["--mode", "inference", "--config", str(path)]) == 0
    assert "(openvino int8)" in (root / "inference_artifacts/log/pipeline.log").read_text()
    rows = pd.read_csv(root / "inference_artifacts/output/output.csv")
    assert ((rows["raw_score"] >= fp32["threshold"]) == (rows["pred_label"] != "good")).all()


def test_int8_needs_the_openvino_export_in_the_plan(project, capsys):
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "train").update({"export": ["onnx"], "precision": "int8"})
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("ERROR: plan error:") and "add openvino to the train arg export" in line


@pytest.mark.parametrize(
    ("requirements", "runtime"),
    [("requirements-edge.txt", "onnxruntime"), ("requirements-edge-openvino.txt", "openvino")],
)
def test_slim_install_without_torch_scores_model_tar_gz_as_torch_does(project, tmp_path_factory, requirements, runtime):
    """An edge requirements file in a fresh venv (no torch at all) runs main.py --mode inference on model.tar.gz."""
    venv = tmp_path_factory.mktemp("edge") / "venv"
    assert edge_install.REQUIREMENTS[runtime] == requirements
    done = subprocess.run(
        [sys.executable, str(ROOT / "edge_install.py"), "--runtime", runtime, str(venv)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]  # it also checks that torch is absent
    assert edge_install.unused_files(edge_install.site_packages(venv)) == [], "pruned"
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
    assert f"({runtime})" in done.stderr
    edge_rows = pd.read_csv(root / "inference_artifacts/output/output.csv")
    assert list(edge_rows["pred_label"]) == list(torch_rows["pred_label"])
    assert (edge_rows["anomaly_score"] - torch_rows["anomaly_score"]).abs().max() <= 1e-3


def test_patchcore_tail_with_an_inverted_file_equals_the_torch_scorer(project, monkeypatch):
    """The exported runtime's bank search (bounds, exact peaks, inverted-file maps) gives the torch scorer's."""
    from vad.models.factory import load
    from vad.models.patchcore import settings

    trained = _train(project, "patchcore", export=[])
    monkeypatch.setattr(settings, "BOUND_MIN_ROWS", 100)  # the small test bank gets an inverted file
    monkeypatch.setattr(settings, "EXACT_MAP_ROWS", 50)  # and its maps come from it, in both runtimes
    model = load(trained["models"] / "train")
    assert model.model.bank_tail.index.index is not None
    images = sorted(str(p) for p in (trained["root"] / "data" / "train").rglob("*.png"))
    folder = trained["models"] / "train"
    manifest = export_module.export_model(model.model, model.spec, model.calibration, images, folder)
    parity = json.loads((trained["models"] / "export" / "parity.json").read_text())["onnx"]
    assert manifest["accepted"] and manifest["tail"] == "patchcore", parity
    assert parity["raw_max_relative_difference"] <= 1e-5
    assert parity["map_max_abs_difference"] <= 1e-3, "maps from the same inverted file (up to float rounding)"
    assert (trained["models"] / "export" / "patchcore_tail.npz").is_file()


def test_export_mode_int8_calibrates_and_gates_on_disjoint_images(project, monkeypatch):
    """--mode export int8: calibrated on OK training images, gated on the others and the validation images."""
    calibrated = {}
    original = int8_module.quantize_int8

    def recording(model, images, size, scope="graph"):
        calibrated["images"] = list(images)
        return original(model, images, size, scope)

    monkeypatch.setattr(int8_module, "quantize_int8", recording)
    trained = _train(project, "fastflow", export=[])
    step_args(trained["plan"], "train", "train").update(export=["openvino"], precision="int8")
    path = write_plan(trained["root"], trained["plan"])
    main.main(["--mode", "export", "--config", str(path)])  # int8 kept or refused: the fp32 graph passes either way
    parity = json.loads((trained["models"] / "export" / "parity.json").read_text())
    assert set(parity) == {"openvino", "openvino_int8"}
    gate = parity["openvino_int8"]
    assert gate["validation_images"] == 14 and gate["n_ng"] == 6 and gate["held_out_training_images"] == 6, gate
    validation = set(pd.read_csv(trained["root"] / "train_artifacts/output/output.csv")["image_path"])
    names = {str(p.relative_to(trained["root"] / "data" / "train")) for p in map(Path, calibrated["images"])}
    assert len(names) == 18 and all(name.startswith("good/") for name in names)
    assert not names & validation, "calibrated on training images only"
    held_out = {str(Path(p).relative_to(trained["root"] / "data" / "train")) for p in gate["held_out_training_files"]}
    assert len(held_out) == 6 and all(name.startswith("good/") for name in held_out)
    assert not held_out & names and not held_out & validation, (
        "the gate's training images: neither calibration nor validation"
    )
    assert gate["calibration_images"] == 18


def test_an_int8_quantiser_that_fails_costs_neither_the_fp32_graphs_nor_the_model(project, monkeypatch):
    def broken(model, images, size, scope="graph"):
        raise RuntimeError("quantiser crashed")

    monkeypatch.setattr(int8_module, "quantize_int8", broken)
    trained = _train(project, "padim", precision="int8")
    manifest = read_manifest(trained["models"] / "train")
    assert manifest["exports"]["openvino_int8"] == {
        "accepted": False, "file": "model_int8.xml", "precision": "int8", "runtime": "openvino",
        "reason": "export failed (RuntimeError: quantiser crashed)",
    }  # fmt: skip
    assert manifest["exports"]["openvino"]["accepted"] and manifest["exports"]["onnx"]["accepted"]
    assert usable_kind(trained["models"] / "train", "openvino").precision == "fp32"


def test_openvino_and_nncf_telemetry_is_declined(project, tmp_path):
    """Without a consent file, importing OpenVINO counts the run in ~/intel and converting forks a sender."""
    trained = _train(project, "fastflow", export=["onnx"])
    home = tmp_path / "home"
    home.mkdir()
    code = (
        "import multiprocessing, sys\n"
        "from vad.export.runtime import import_openvino\n"
        "openvino = import_openvino()\n"
        "openvino.convert_model(sys.argv[1])\n"
        "import nncf\n"
        "assert not multiprocessing.active_children(), multiprocessing.active_children()\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(ROOT)}
    model = trained["models"] / "export" / "model.onnx"
    subprocess.run([sys.executable, "-c", code, str(model)], check=True, cwd=ROOT, env=env, timeout=300)
    assert not (home / "intel").exists(), "nothing counted, no client id written"
