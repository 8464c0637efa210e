"""User errors end with one line naming the problem and the fix, a non-zero exit, and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT, set_external, step_args, write_plan

import main


def run_cli(plan_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--mode", "train", "--config", str(plan_path)],
        capture_output=True,
        text=True,
        cwd=plan_path.parent,
        timeout=300,
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    """The lines that report the problem; the user must see it once, as the last line."""
    lines = [line for line in stderr.splitlines() if "error:" in line.lower()]
    assert lines and lines[-1].startswith("ERROR:") and stderr.rstrip().endswith(lines[-1])
    return lines


def test_misspelt_plan_key_cli(project):
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "readiness")["y_colum"] = "label"
    result = run_cli(write_plan(root, plan))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "readiness.args.y_colum" in line and "did you mean 'y_column'" in line


@pytest.mark.slow
def test_missing_data_folder_cli(project):
    root, plan = project["root"], project["plan"]
    set_external(plan, "load_train_data_path", "no/such/folder")
    result = run_cli(write_plan(root, plan))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "no/such/folder" in line and "not an existing folder" in line


def test_csv_without_label_column_cli(project):
    root, plan = project["root"], project["plan"]
    csv = root / "data/train/train.csv"
    pd.read_csv(csv).rename(columns={"label": "class"}).to_csv(csv, index=False)
    result = run_cli(write_plan(root, plan))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "no label column 'label'" in line and "y_column" in line and "class" in line


@pytest.mark.slow
def test_failed_run_keeps_previous_artifacts(project, capsys):
    root, plan = project["root"], project["plan"]
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    weights = root / "train_artifacts/models/train/model.safetensors"
    before = weights.read_bytes()
    csv = root / "data/train/train.csv"
    table = pd.read_csv(csv)
    table["label"] = "bad"
    table.loc[table.index[:3], "label"] = "good"
    table.loc[table.index[:3], "split"] = "valid"
    table.to_csv(csv, index=False)
    step_args(plan, "train", "readiness")["ok_class"] = "good"
    assert main.main(["--mode", "train", "--config", str(write_plan(root, plan))]) == 2
    assert "no 'good' (OK) image in the train split" in capsys.readouterr().err
    assert weights.read_bytes() == before
    errors = list((root / "history/train").glob("*-error"))
    assert len(errors) == 1 and (errors[0] / "log/pipeline.log").is_file()


def test_inference_without_trained_model(project, capsys):
    root, plan = project["root"], project["plan"]
    code = main.main(["--mode", "inference", "--config", str(write_plan(root, plan))])
    assert code == 2
    assert "no trained model" in capsys.readouterr().err
