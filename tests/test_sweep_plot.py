"""The threshold sweep chart, drawn without matplotlib."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vad.reports import plot_sweep
from vad.sweep_plot import MARGIN, SERIES, SIZE, nice_ticks


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (18.7, 31.2, [20.0, 22.0, 24.0, 26.0, 28.0, 30.0]),
        (-0.013, 0.004, [-0.012, -0.01, -0.008, -0.006, -0.004, -0.002, 0.0, 0.002, 0.004]),
        (5.0, 5.0, [5.0]),
    ],
)
def test_ticks_are_round_and_inside_the_axis(low, high, expected):
    ticks = nice_ticks(low, high, most=9 if low < 0 else 7)
    assert ticks == pytest.approx(expected)


def _colour(hex_code: str) -> tuple[int, int, int]:
    return tuple(int(hex_code[k : k + 2], 16) for k in (1, 3, 5))


def test_the_chart_draws_each_metric_where_its_values_are_and_marks_the_threshold(tmp_path):
    thresholds = np.linspace(10.0, 20.0, 41)
    table = pd.DataFrame(
        {
            "threshold": thresholds,
            "accuracy": np.full(41, 0.9),
            "precision": np.full(41, 0.5),
            "recall": np.full(41, 0.1),
            "f1": np.where(thresholds < 15, 0.3, 0.7),
        }
    )
    path = plot_sweep(table, 15.0, tmp_path / "sweep.png", "model / backbone")
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert image.shape == (SIZE[1], SIZE[0], 3)
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = SIZE[0] - MARGIN["right"], SIZE[1] - MARGIN["bottom"]

    def row_of(y: float) -> int:
        return round(bottom - (y + 0.02) / 1.04 * (bottom - top))

    x_right = round(left + (19.5 - 9.5) / 11.0 * (right - left))  # x = 19.5, clear of the legend
    x_left = round(left + (12.0 - 9.5) / 11.0 * (right - left))
    for (name, colour), y, x in zip(SERIES, (0.9, 0.5, 0.1, 0.7), (x_right,) * 4, strict=True):
        column = image[row_of(y) - 2 : row_of(y) + 3, x]
        assert (np.abs(column - _colour(colour)).sum(axis=1) < 60).any(), name
    f1_left = image[row_of(0.3) - 2 : row_of(0.3) + 3, x_left]
    assert (np.abs(f1_left - _colour(SERIES[3][1])).sum(axis=1) < 60).any()
    x_threshold = round(left + (15.0 - 9.5) / 11.0 * (right - left))
    dark = (image[top + 5 : bottom - 5, x_threshold - 1 : x_threshold + 2].sum(axis=2) < 200).any(axis=1)
    assert 0.4 < dark.mean() < 0.9  # dashed: dark on part of the height only


def test_a_sweep_with_one_threshold_or_missing_values_still_draws(tmp_path):
    one = pd.DataFrame({"threshold": [3.0], "accuracy": [1.0], "precision": [np.nan], "recall": [1.0], "f1": [1.0]})
    assert Image.open(plot_sweep(one, 3.0, tmp_path / "one.png", "t")).size == SIZE


def test_writing_the_validation_reports_imports_no_matplotlib():
    code = "import sys, vad.reports, vad.train_reports; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
