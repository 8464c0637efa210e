"""benchmarks.ood's figures: flag rates, margins, the cost from paired rounds, the criteria and the tables."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import ood


def test_an_image_is_flagged_from_an_ood_score_of_one_and_a_nan_counts_as_flagged():
    assert ood.flagged_percent(np.array([0.2, 0.99, 1.0, 3.0])) == 50.0
    assert ood.flagged_percent(np.array([0.5, np.nan])) == 50.0
    assert np.isnan(ood.flagged_percent(np.zeros(0)))


def test_a_row_splits_own_ok_from_own_ng_and_pools_the_other_datasets():
    scores = {
        "gravel": np.array([0.2, 0.4, 1.2, 0.9]),  # OK, OK, NG (flagged), NG
        "brick": np.array([5.0, 0.8]),
        "cells": np.array([2.0, 3.0, 4.0]),
    }
    is_ng = {"gravel": np.array([False, False, True, True]), "brick": np.zeros(2, bool), "cells": np.zeros(3, bool)}
    row = ood.flag_row("gravel", scores, is_ng)
    assert row["own_ok"] == 0.0 and row["own_ng"] == 50.0
    assert row["own_ok_max"] == pytest.approx(0.4) and row["own_ng_max"] == pytest.approx(1.2)
    assert row["others"] == {"brick": 50.0, "cells": 100.0}
    assert row["others_all"] == pytest.approx(80.0) and row["other_min"] == pytest.approx(0.8)
    assert row["images"] == {"own_ok": 2, "own_ng": 2, "others": 5}
    table = ood.flag_table([row, ood.flag_row("brick", scores, is_ng)])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert lines[2].startswith("| gravel | 0.0 | 50.0 | - | 50.0 | 100.0 | 80.0 | 0.80 | 0.40 / 1.20 |")


def test_the_cost_is_the_median_of_the_rounds_paired_ratios():
    row = ood.cost_row("gravel", "torch", 10, plain_s=[1.0, 2.0, 1.0], checked_s=[1.1, 2.0, 1.5])
    assert row["cost"] == pytest.approx(10.0) and row["cost_min"] == pytest.approx(0.0)
    assert row["cost_max"] == pytest.approx(50.0)
    assert row["plain_rate"] == pytest.approx(10.0) and row["checked_rate"] == pytest.approx(10 / 1.5)
    assert "| gravel | torch | n/a | 10.0 | 6.7 | +10.0 (+0.0 to +50.0) |" in ood.cost_table([row])
    assert ood.cost_note([row]) == ""
    assert "gravel in torch" in ood.cost_note([{**row, "pass": "second backbone pass"}])


def test_each_batch_is_scored_both_ways_back_to_back_which_first_alternating():
    calls: list[str] = []
    plain_s, checked_s = ood.cost_rounds(
        lambda i: calls.append(f"p{i}"), lambda i: calls.append(f"c{i}"), batches=3, rounds=2
    )
    round_calls = ["p0", "c0", "c1", "p1", "p2", "c2"]
    assert calls == ["p0", "c0", *round_calls, *round_calls]  # a warm-up pair, then every batch each way
    assert len(plain_s) == len(checked_s) == 2


def test_the_criteria_name_the_worst_figure_against_each_limit():
    flags = [
        {"model": "a", "own_ok": 0.0, "own_ng": 2.0, "others": {"b": 100.0, "c": 99.5}},
        {"model": "b", "own_ok": 0.0, "own_ng": 0.0, "others": {"a": 100.0}},
    ]
    costs = [
        {"model": "a", "runtime": "torch", "cost": 3.0},
        {"model": "b", "runtime": "torch", "cost": 4.9},
        {"model": "a", "runtime": "openvino", "cost": 7.0},
    ]
    lines = ood.verdicts(flags, costs).splitlines()
    assert lines[0].endswith("lowest 99.5% (a model, c): met.")
    assert lines[1].endswith("highest 2.0% (a NG): **not met**.")
    assert "lowest 100.0% (3 of 3)" in ood.verdicts([{**flags[0], "others": {"b": 100.0, "c": 100.0}}, flags[1]], [])
    assert lines[2].startswith("- Cost in torch") and lines[2].endswith("highest median 4.9% (b model): met.")
    assert lines[3].startswith("- Cost in openvino") and lines[3].endswith("7.0% (a model): **not met**.")
