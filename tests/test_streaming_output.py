"""Inference writes output.csv batch by batch, and the streamed file is the one a whole-frame write gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import make_inference_folder, set_external, step_args, write_plan

import main
from assets import inference
from assets.inference import CsvRows


def test_csv_rows_appended_in_batches_equal_one_write(tmp_path):
    frame = pd.DataFrame(
        {
            "image_path": [f"img_{i}.png" for i in range(7)],
            "mask_path": ["m.png", None, None, "n.png", None, None, None],
            "anomaly_score": np.linspace(0, 1, 7),
            "pred_label": ["good", "bad"] * 3 + ["good"],
            "note": pd.array(['a, "quoted"', "two\nlines", None, "ümlaut", "", " x ", "z"], dtype="string"),
        }
    )
    writer = CsvRows(tmp_path / "streamed.csv")
    for start in range(0, 7, 3):
        writer.append(frame.iloc[start : start + 3])
    frame.to_csv(tmp_path / "whole.csv", index=False)
    assert writer.rows == 7
    assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_inference_streams_rows_in_input_order(project, monkeypatch):
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "train")["model_name"] = "patchcore"
    make_inference_folder(root / "data" / "many", n_ok=4, n_ng=3, seed=5)
    set_external(plan, "load_inference_data_path", "data/many")
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    written = []
    original = CsvRows.append

    def spy(self, frame):
        original(self, frame)
        written.append(len(pd.read_csv(self.path)))  # the file grows while scoring goes on

    monkeypatch.setattr(inference, "BATCH_SIZE", 3)
    monkeypatch.setattr(CsvRows, "append", spy)
    assert main.main(["--mode", "inference", "--config", str(path)]) == 0
    assert written == [3, 6, 7]
    output = pd.read_csv(root / "inference_artifacts/output/output.csv")
    assert list(output["image_path"]) == sorted(p.name for p in (root / "data" / "many").iterdir())
    assert output["anomaly_score"].between(0, 1).all()
