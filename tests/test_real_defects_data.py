"""The real-defect benchmark's data handling: which cells it reads, how it splits them, what plan it runs.

A stand-in for the elpv-dataset package folder (its labels.csv layout, tiny files for images) keeps the
test independent of the benchmark requirement.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT

from benchmarks import real_defects

N_MONO_OK, N_MONO_NG = 240, 31


def _package(tmp_path: Path) -> Path:
    """A package folder shaped like elpv_dataset: data/labels.csv and data/images/*.png."""
    data = tmp_path / "elpv_dataset" / "data"
    (data / "images").mkdir(parents=True)
    lines = []
    kinds = (
        [("mono", 0.0)] * N_MONO_OK
        + [("mono", 1.0)] * N_MONO_NG
        + [("mono", 1 / 3), ("mono", 2 / 3)] * 5
        + [("poly", 0.0)] * 40
        + [("poly", 1.0)] * 40
    )
    for number, (kind, probability) in enumerate(kinds, start=1):
        name = f"images/cell{number:04d}.png"
        (data / name).write_bytes(b"png")
        lines.append(f"{name}  {probability}  {kind}")
    (data / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data.parent


def _kind(files: pd.Series, package: Path) -> set[str]:
    table = (package / "data" / "labels.csv").read_text().split()
    kinds = {Path(table[i]).name: table[i + 2] for i in range(0, len(table), 3)}
    return {kinds[Path(file).name] for file in files}


def test_cells_are_the_certain_monocrystalline_ones_only(tmp_path):
    package = _package(tmp_path)
    labels = real_defects.cells(package)
    assert int((~labels["is_ng"]).sum()) == N_MONO_OK
    assert int(labels["is_ng"].sum()) == N_MONO_NG
    assert _kind(labels["file"], package) == {"mono"}  # the reserved poly cells are never read


def test_each_split_is_user_shaped_disjoint_balanced_and_seeded(tmp_path):
    labels = real_defects.cells(_package(tmp_path))
    train, test = real_defects.split_frames(labels, seed=0)
    fitted = train[train["split"] == "train"]
    valid = train[train["split"] == "valid"]
    assert len(fitted) == 200 and not fitted["is_ng"].any()
    assert (~valid["is_ng"]).sum() == 20 and valid["is_ng"].sum() == 20
    assert test["is_ng"].sum() == (~test["is_ng"]).sum() == min(N_MONO_OK - 220, N_MONO_NG - 20)
    assert not set(train["file"]) & set(test["file"])
    again, _ = real_defects.split_frames(labels, seed=0)
    other, _ = real_defects.split_frames(labels, seed=1)
    assert list(again["file"]) == list(train["file"])
    assert list(other["file"]) != list(train["file"])


def test_a_split_folder_has_the_users_csv_layout_and_the_plan_changes_only_the_data(tmp_path):
    labels = real_defects.cells(_package(tmp_path))
    folder = real_defects.build_split(tmp_path / "split0", labels, seed=0)
    train_csv = pd.read_csv(folder / "train" / "train.csv")
    assert list(train_csv.columns) == ["image_path", "label", "split"]
    assert set(train_csv["label"]) == {real_defects.OK_LABEL, real_defects.NG_LABEL}
    assert all((folder / "train" / path).is_file() for path in train_csv["image_path"])
    test_csv = pd.read_csv(folder / "test" / "test.csv")
    assert list(test_csv.columns) == ["image_path", "label"]
    assert all((folder / "test" / path).is_file() for path in test_csv["image_path"])

    bundled = yaml.safe_load((ROOT / "experimental_plan.yaml").read_text(encoding="utf-8"))
    plan = real_defects.make_plan(folder, real_defects.PLANS["defaults"])
    assert plan["external_path"] == [
        {"load_train_data_path": str(folder / "train")},
        {"load_inference_data_path": str(folder / "test")},
    ]
    assert plan["user_parameters"] == bundled["user_parameters"]
    fast = real_defects.make_plan(folder, real_defects.PLANS["patchcore-lite1"], fast=True)
    train_args = fast["user_parameters"][0]["train_pipeline"][2]["args"][0]
    assert train_args["model_parameters"]["patchcore_backbone"] == "tf_efficientnet_lite1"
    assert train_args["export"] == [] and train_args["save_validation_heatmap"] is False


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(real_defects.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"requirements-real-defects\.txt"):
        real_defects.cells()
