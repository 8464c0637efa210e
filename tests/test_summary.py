"""The inference_summary.yaml contract."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from alo.summary import SummaryContractError, build_summary, rounded_probability, validate_summary, write_summary
from vad.batch_summary import summarize


def test_single_image_summary_and_sorted_keys(tmp_path):
    predictions = pd.DataFrame({"anomaly_score": [0.83], "certainty": [0.342], "pred_label": ["bad"]})
    result, score, probability = summarize(predictions, (predictions["pred_label"] == "bad").to_numpy(), "good", "bad")
    summary = build_summary(
        result=result, score=score, probability=probability, note="n", file_path="a.png", version="1.0.0"
    )
    path = write_summary(summary, tmp_path / "inference_summary.yaml")
    text = path.read_text(encoding="utf-8")
    keys = [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")]
    assert keys == sorted(keys) == ["date", "file_path", "note", "probability", "result", "score", "version"]
    loaded = yaml.safe_load(text)
    assert loaded["result"] == "bad"
    assert loaded["score"] == 0.34
    assert loaded["probability"] == {"bad": 0.83, "good": 0.17}


def test_several_images_counts_and_mean_certainty():
    predictions = pd.DataFrame(
        {"anomaly_score": [0.1, 0.2, 0.9], "certainty": [0.5, 0.3, 0.7], "pred_label": ["good", "good", "bad"]}
    )
    result, score, probability = summarize(predictions, (predictions["pred_label"] == "bad").to_numpy(), "good", "bad")
    assert result == "good:2,bad:1"
    assert score == pytest.approx(0.5)
    assert probability["bad"] == pytest.approx(0.4)


def test_long_label_names_fall_back_to_short_counts():
    predictions = pd.DataFrame(
        {
            "anomaly_score": [0.1, 0.9],
            "certainty": [0.5, 0.5],
            "pred_label": ["normal_product_surface", "scratched_product_surface"],
        }
    )
    result, _, _ = summarize(
        predictions,
        (predictions["pred_label"] == "scratched_product_surface").to_numpy(),
        "normal_product_surface",
        "scratched_product_surface",
    )
    assert result == "OK:1,NG:1"


def test_probabilities_round_to_two_decimals_and_sum_to_one():
    rounded = rounded_probability({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert sum(rounded.values()) == pytest.approx(1.0, abs=1e-12)
    assert all(round(v, 2) == v for v in rounded.values())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("result", "x" * 33),
        ("note", "y" * 129),
        ("score", 1.5),
        ("date", "yesterday"),
        ("probability", {"good": 0.5, "bad": 0.4}),
    ],
)
def test_contract_violations_are_refused(key, value):
    summary = build_summary(
        result="good", score=0.9, probability={"good": 0.9, "bad": 0.1}, note="", file_path="x", version="1"
    )
    summary[key] = value
    with pytest.raises(SummaryContractError):
        validate_summary(summary)
