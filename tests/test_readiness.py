"""Readiness: cleaning, OK-class inference, split, and the F1 -> Percentile switch."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_dataset

from alo.errors import DataError
from assets.readiness import ReadinessArgs, ReadinessStep


class FakeContext:
    def __init__(self, tmp_path: Path, **args):
        self.pipeline = "train"
        self.args = ReadinessArgs(**args)
        self.model_dir = tmp_path / "models"
        self.logger = logging.getLogger("assets.readiness.test")

    def args_as(self, kind):
        assert isinstance(self.args, kind)
        return self.args


def run_readiness(tmp_path, table: pd.DataFrame, data_dir: Path, **args):
    ctx = FakeContext(tmp_path, **args)
    data, config = ReadinessStep().run(ctx, {"dataframe": table, "data_dir": data_dir}, {})
    return data["samples"], config["readiness"]


@pytest.fixture
def dataset(tmp_path):
    folder = make_dataset(tmp_path / "d", n_train=20, n_valid_ok=10, n_valid_ng=8, size=32)
    return folder, pd.read_csv(folder / "train.csv", dtype=str)


def test_split_column_and_inferred_ok_class(tmp_path, dataset):
    folder, table = dataset
    _, readiness = run_readiness(tmp_path, table, folder, train_validate_column="split")
    assert readiness["ok_class"] == "good"
    assert readiness["ng_name"] == "bad"
    assert readiness["counts"] == {"train_ok": 20, "valid_ok": 10, "valid_ng": 8}
    assert readiness["threshold_method"] == "F1"
    assert (tmp_path / "models/readiness/readiness_config.json").is_file()


def test_random_split_holds_out_rate_of_ok_and_all_ng(tmp_path, dataset):
    folder, table = dataset
    samples, readiness = run_readiness(tmp_path, table.drop(columns="split"), folder, validation_split_rate=0.2)
    assert readiness["counts"] == {"train_ok": 24, "valid_ok": 6, "valid_ng": 8}
    again, _ = run_readiness(tmp_path, table.drop(columns="split"), folder, validation_split_rate=0.2)
    assert list(again["_split"]) == list(samples["_split"])


def test_few_ng_switches_to_percentile(tmp_path, dataset, caplog):
    folder, table = dataset
    table = table.drop(table.index[table["label"] == "bad"][3:])
    with caplog.at_level(logging.WARNING):
        _, readiness = run_readiness(tmp_path, table, folder, train_validate_column="split")
    assert readiness["threshold_method"] == "Percentile"
    assert "num_minor_threshold" in caplog.text


def test_low_ng_ratio_switches_to_percentile(tmp_path, dataset):
    folder, table = dataset
    _, readiness = run_readiness(
        tmp_path, table, folder, train_validate_column="split", num_minor_threshold=2, ratio_minor_threshold=0.9
    )
    assert readiness["threshold_method"] == "Percentile"


def test_bad_rows_are_skipped_and_named(tmp_path, dataset, caplog):
    folder, table = dataset
    extra = pd.DataFrame(
        [
            {"label": None, "image_path": "good/g000.png", "split": "train"},
            {"label": "good", "image_path": "good/missing.png", "split": "train"},
            {"label": "good", "image_path": "../outside.png", "split": "train"},
            {"label": "good", "image_path": "good/g001.png", "split": "train"},
        ]
    )
    with caplog.at_level(logging.WARNING):
        samples, _ = run_readiness(
            tmp_path, pd.concat([table, extra], ignore_index=True), folder, train_validate_column="split"
        )
    assert len(samples) == len(table)
    assert "missing.png" in caplog.text and "outside the data folder" in caplog.text
    assert "duplicate" in caplog.text and "empty label" in caplog.text


def test_unreadable_images_are_skipped_and_named(tmp_path, dataset, caplog):
    folder, table = dataset
    (folder / "good" / "empty.png").write_bytes(b"")
    (folder / "good" / "words.png").write_bytes(b"this is not a picture")
    whole = (folder / "good" / "g000.png").read_bytes()
    (folder / "good" / "cut.png").write_bytes(whole[: len(whole) // 2])
    extra = pd.DataFrame(
        [
            {"label": "good", "image_path": f"good/{name}", "split": "train"}
            for name in ("empty.png", "words.png", "cut.png")
        ]
    )
    with caplog.at_level(logging.WARNING):
        samples, _ = run_readiness(
            tmp_path, pd.concat([table, extra], ignore_index=True), folder, train_validate_column="split"
        )
    assert len(samples) == len(table)
    line = next(r.message for r in caplog.records if "cannot be decoded" in r.message)
    assert line.startswith("skipped 3 row(s)") and all(n in line for n in ("empty.png", "words.png", "cut.png"))


def test_unknown_ok_class_lists_labels(tmp_path, dataset):
    folder, table = dataset
    with pytest.raises(DataError, match=r"ok_class 'god'.*did you mean 'good'.*labels: good, bad"):
        run_readiness(tmp_path, table, folder, ok_class="god")


def test_bad_split_values_are_refused(tmp_path, dataset):
    folder, table = dataset
    table.loc[0, "split"] = "test"
    with pytest.raises(DataError, match=r"only 'train' or 'valid'.*'test'"):
        run_readiness(tmp_path, table, folder, train_validate_column="split")


def test_no_ok_training_images_stops(tmp_path, dataset):
    folder, table = dataset
    table["split"] = "valid"
    with pytest.raises(DataError, match=r"no 'good' \(OK\) image in the train split"):
        run_readiness(tmp_path, table, folder, train_validate_column="split")
