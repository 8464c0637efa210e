"""The Detector: the public scoring API every consumer uses, loaded once from a folder or a model.tar.gz."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, set_external, step_args, write_plan
from PIL import Image

import main
from vad.detector import Detector, Prediction


@pytest.fixture
def trained(project, tmp_path_factory):
    """A PatchCore model trained and scored through main.py, its model.tar.gz exported."""
    root, plan = project["root"], project["plan"]
    exported = tmp_path_factory.mktemp("exported")
    set_external(plan, "save_train_artifacts_path", str(exported))
    assert main.main(["--mode", "all", "--config", str(write_plan(root, plan))]) == 0
    return {"root": root, "archive": exported / "model.tar.gz", "plan": plan}


@pytest.mark.slow
def test_detector_in_a_fresh_process_scores_like_output_csv(trained):
    output = pd.read_csv(trained["root"] / "inference_artifacts/output/output.csv")
    files = [str(trained["root"] / "data/inference" / name) for name in output["image_path"]]
    code = (
        "import json, sys\n"
        "from vad.detector import Detector\n"
        "detector = Detector.load(sys.argv[1])\n"
        "results = detector.predict(json.loads(sys.argv[2]))\n"
        "print(json.dumps([[r.raw_score, r.anomaly_score, r.label, r.certainty] for r in results]))\n"
    )
    command = [sys.executable, "-c", code, str(trained["archive"]), json.dumps(files)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [row[0] for row in rows] == pytest.approx(list(output["raw_score"]), rel=1e-6, abs=1e-7)
    assert [row[1] for row in rows] == pytest.approx(list(output["anomaly_score"]), abs=1e-7)
    assert [row[2] for row in rows] == list(output["pred_label"])
    assert [row[3] for row in rows] == pytest.approx(list(output["certainty"]), abs=1e-6)


@pytest.mark.slow
def test_predict_takes_paths_pil_images_and_arrays_and_returns_typed_results(trained):
    detector = Detector.load(trained["root"] / "train_artifacts/models")
    path = sorted((trained["root"] / "data/inference").glob("ng_*.png"))[0]
    picture = Image.open(path)
    by_path = detector.predict(str(path), maps=True, heatmaps=True)
    assert isinstance(by_path, Prediction) and by_path.source == str(path)
    assert by_path.is_anomalous and by_path.label == "bad" and by_path.anomaly_score >= 0.5
    assert by_path.anomaly_map.shape == tuple(detector.spec.input_size)
    assert by_path.anomaly_map.min() >= 0.0 and by_path.anomaly_map.max() <= 1.0
    assert by_path.heatmap.size == (picture.width * 3, picture.height)
    gray = np.asarray(picture.convert("L"))
    results = detector.predict([picture, np.asarray(picture), path])
    assert [r.raw_score for r in results] == pytest.approx([by_path.raw_score] * 3, rel=1e-6)
    assert results[0].anomaly_map is None and results[0].heatmap is None and results[0].source is None
    assert np.isfinite(detector.predict(gray).raw_score)
    lenient = detector.with_threshold(1.0)
    assert lenient.trained is detector.trained, "the model is shared, not loaded again"
    assert not lenient.predict(picture).is_anomalous or lenient.predict(picture).anomaly_score == 1.0


@pytest.mark.slow
def test_bad_inputs_and_paths_are_one_line_errors(trained, tmp_path):
    from alo.errors import DataError, ModelError

    detector = Detector.load(trained["archive"])
    with pytest.raises(DataError, match="H x W"):
        detector.predict(np.zeros((4, 4, 7), dtype=np.uint8))
    with pytest.raises(DataError, match="cannot score a dict"):
        detector.predict({"not": "an image"})  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="neither a models folder"):
        Detector.load(tmp_path / "missing")


@pytest.mark.slow
def test_accelerator_gpu_without_cuda_is_a_plan_error_and_auto_runs_on_the_cpu(project, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "train")["accelerator"] = "gpu"
    assert main.main(["--mode", "train", "--config", str(write_plan(root, plan))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(err) == 1 and "accelerator 'gpu'" in err[0]
    step_args(plan, "train", "train")["accelerator"] = "auto"
    step_args(plan, "inference", "inference")["accelerator"] = "auto"
    assert main.main(["--mode", "all", "--config", str(write_plan(root, plan))]) == 0
    assert "on cpu" in (root / "train_artifacts/log/pipeline.log").read_text()
