"""Inference writes output.csv batch by batch, and the streamed file is the one a whole-frame write gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_inference_folder, set_external, step_args, write_plan

import main
from assets import inference
from vad.csv_rows import CsvRows, column_cells, frame_text


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


def _tricky_frame(seed: int, rows: int) -> pd.DataFrame:
    """Every column type a sample table can hold, with empty cells, quotes, line breaks and extreme floats."""
    rng = np.random.default_rng(seed)
    floats = rng.choice([0.1 + 0.2, 1e-20, 1e16, 123456789.123, -0.0, np.nan, 5e-324, 1.0, 2.5e300, -7.25], rows)
    texts = ['a, "quoted"', "two\nlines", "cr\rhere", "", " x ", "ümlaut", "plain", "semi;colon"]
    pick = rng.integers(0, len(texts), rows)
    missing = rng.random(rows) < 0.3
    with np.errstate(over="ignore"):  # 2.5e300 is inf in float32, written as pandas writes it
        narrow = floats.astype(np.float32)
    return pd.DataFrame(
        {
            "float": floats,
            "float32": narrow,
            "int": rng.integers(-(10**12), 10**12, rows),
            "bool": rng.random(rows) < 0.5,
            "object": [None if m else texts[i] for m, i in zip(missing, pick, strict=True)],
            "string": pd.array([None if m else texts[i] for m, i in zip(missing, pick, strict=True)], dtype="string"),
            "boolean": pd.array([None if m else bool(i % 2) for m, i in zip(missing, pick, strict=True)], "boolean"),
            "Int64": pd.array([None if m else int(i) for m, i in zip(missing, pick, strict=True)], dtype="Int64"),
            "mixed": [np.nan if m else (i if i % 2 else texts[i]) for m, i in zip(missing, pick, strict=True)],
            "labels": np.where(missing, "bad", "good"),
        }
    )


def test_frame_text_equals_pandas_to_csv():
    for seed in range(20):
        frame = _tricky_frame(seed, rows=1 + seed * 3)
        for header in (True, False):
            assert frame_text(frame, header) == frame.to_csv(header=header, index=False)
    one_empty = pd.DataFrame({"only": [""]})  # the csv module quotes a lone empty cell, as pandas does
    assert frame_text(one_empty, True) == one_empty.to_csv(index=False)


def test_frame_text_leaves_other_column_types_to_pandas():
    frame = pd.DataFrame({"when": pd.to_datetime(["2026-12-01 10:00", None]), "kind": pd.Categorical(["a", "b"])})
    assert column_cells(frame["when"]) is None
    assert column_cells(frame["kind"]) is None
    assert frame_text(frame, True) == frame.to_csv(index=False)


@pytest.mark.slow
def test_inference_rows_written_from_cells_equal_pandas(project, monkeypatch):
    """output.csv written from cells (input rows once, scored columns per batch) equals pandas' per-batch frames."""
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "train")["model_name"] = "patchcore"
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    monkeypatch.setattr(inference, "BATCH_SIZE", 2)
    output = root / "inference_artifacts/output/output.csv"
    assert main.main(["--mode", "inference", "--config", str(path)]) == 0
    from_cells = output.read_bytes()
    monkeypatch.setattr(inference, "_row_cells", lambda rows: None)  # pandas writes each batch's frame
    assert main.main(["--mode", "inference", "--config", str(path)]) == 0
    assert len(pd.read_csv(output)) > 2  # several batches
    assert from_cells == output.read_bytes()


@pytest.mark.slow
def test_inference_streams_rows_in_input_order(project, monkeypatch):
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "train")["model_name"] = "patchcore"
    make_inference_folder(root / "data" / "many", n_ok=4, n_ng=3, seed=5)
    set_external(plan, "load_inference_data_path", "data/many")
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    written = []
    original = CsvRows.write_text

    def spy(self, text, rows):
        original(self, text, rows)
        written.append(len(pd.read_csv(self.path)))  # the file grows while scoring goes on

    monkeypatch.setattr(inference, "BATCH_SIZE", 3)
    monkeypatch.setattr(CsvRows, "write_text", spy)
    assert main.main(["--mode", "inference", "--config", str(path)]) == 0
    assert written == [3, 6, 7]
    output = pd.read_csv(root / "inference_artifacts/output/output.csv")
    assert list(output["image_path"]) == sorted(p.name for p in (root / "data" / "many").iterdir())
    assert output["anomaly_score"].between(0, 1).all()
