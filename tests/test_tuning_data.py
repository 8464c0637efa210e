"""The tuner's labelled data is what the plan's own input and readiness steps make of the train folder."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import load_default_plan, make_dataset, set_external, step_args, write_plan

from alo.errors import DataError
from alo.plan import load_plan
from vad.tuning.resample import SPLIT_COLUMN, labelled_data, write_resamples


def _plan(root, readiness: dict | None = None, encoding: str | None = None):
    plan = copy.deepcopy(load_default_plan())
    set_external(plan, "load_train_data_path", "data/train")
    step_args(plan, "train", "readiness").update(readiness or {})
    if encoding is not None:
        step_args(plan, "train", "input")["encoding"] = encoding
    return load_plan(write_plan(root, plan))


def _without_split(folder) -> None:
    table = pd.read_csv(folder / "train.csv").drop(columns=["split"])
    table.to_csv(folder / "train.csv", index=False)


def test_the_split_is_the_readiness_steps_whatever_the_experiment_seed(tmp_path):
    """No split column: the OK validation images are the ones readiness holds out (its own seed)."""
    folder = make_dataset(tmp_path / "data" / "train", n_train=16, n_valid_ok=4, n_valid_ng=5)
    _without_split(folder)
    chosen = []
    for seed in (1, 7):
        plan = _plan(tmp_path, {"validation_split_rate": 0.25, "train_validate_column": ""})
        raw = copy.deepcopy(plan.raw)
        step_args(raw, "train", "train")["experiment_seed"] = seed
        plan = load_plan(write_plan(tmp_path, raw))
        data = labelled_data(plan)
        valid_ok = data.table[(data.table[SPLIT_COLUMN] == "valid") & ~data.is_ng]["image_path"]
        chosen.append(sorted(valid_ok))
        assert data.n_valid_ok == 5 and data.n_ng == 5 and data.n_ok == 20
    assert chosen[0] == chosen[1], "the experiment seed does not move the readiness split"


def test_a_split_that_holds_no_ok_image_is_the_readiness_steps_error(tmp_path):
    folder = make_dataset(tmp_path / "data" / "train", n_train=10, n_valid_ok=2, n_valid_ng=5)
    _without_split(folder)
    with pytest.raises(DataError, match="no 'good' \\(OK\\) image in the validation split"):
        labelled_data(_plan(tmp_path, {"validation_split_rate": 0.0, "train_validate_column": ""}))


def test_bad_rows_are_skipped_as_readiness_skips_them_and_masks_travel(tmp_path):
    """Missing and undecodable images are left out (not an internal error); the default mask column is linked."""
    folder = make_dataset(tmp_path / "data" / "train", n_train=10, n_valid_ok=3, n_valid_ng=5)
    table = pd.read_csv(folder / "train.csv")
    (folder / "masks").mkdir()
    masks = []
    for path in table["image_path"]:
        if path.startswith("bad/"):
            name = f"masks/{path.split('/')[1]}"
            shutil.copy(folder / path, folder / name)
            masks.append(name)
        else:
            masks.append("")
    table["mask_path"] = masks
    (folder / "good" / "broken.png").write_bytes(b"not an image")
    extra = pd.DataFrame(
        [
            {"label": "good", "image_path": "good/broken.png", "split": "train", "mask_path": ""},
            {"label": "good", "image_path": "good/missing.png", "split": "train", "mask_path": ""},
        ]
    )
    pd.concat([table, extra]).to_csv(folder / "train.csv", index=False)
    data = labelled_data(_plan(tmp_path))
    assert len(data.table) == len(table) and "good/broken.png" not in set(data.table["image_path"])
    assert data.mask_column == "mask_path"
    (resample,) = write_resamples(data, tmp_path / "resamples", 1, 0)
    written = pd.read_csv(resample / "labels.csv", keep_default_na=False)
    linked = [cell for cell in written["mask_path"] if cell]
    assert len(linked) == 5 and all((resample / cell).is_file() for cell in linked)
    assert all((resample / cell).is_file() for cell in written["image_path"])
    assert list(written[SPLIT_COLUMN]) == list(data.table[SPLIT_COLUMN])
    assert list(written["split"]) == list(data.table["split"]), "the user's own split column is kept as it was"


def test_the_input_steps_encoding_is_used_and_the_resamples_are_utf8(tmp_path):
    folder = make_dataset(tmp_path / "data" / "train", n_train=10, n_valid_ok=3, n_valid_ng=5)
    table = pd.read_csv(folder / "train.csv")
    table["label"] = np.where(table["label"] == "good", "정상", "불량")  # Korean labels, as a cp949 file holds them
    table.to_csv(folder / "train.csv", index=False, encoding="cp949")
    data = labelled_data(_plan(tmp_path, {"ok_class": "정상"}, encoding="cp949"))
    assert data.n_ng == 5 and data.n_ok == 13
    (resample,) = write_resamples(data, tmp_path / "resamples", 1, 0)
    assert set(pd.read_csv(resample / "labels.csv", encoding="utf-8")["label"]) == {"정상", "불량"}
