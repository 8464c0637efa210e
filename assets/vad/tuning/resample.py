"""Resamples of the user's labelled images for the tuner: the plan's own split, then stratified re-splits.

Only OK images are fitted and every NG image is validation (as the readiness step does), so a re-split keeps
every NG image in validation and draws, with its own seed, as many OK validation images as the plan's split
holds; the rest of the OK images train. Each resample is a folder with a CSV (a ``split`` column) and the
images hard-linked (copied across file systems) under ``images/``: the readiness step refuses paths outside
the data folder, and a trial's plan points ``load_train_data_path`` at the resample's folder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from alo.errors import DataError
from alo.plan import Plan

SPLIT = "split"


@dataclass(frozen=True)
class LabelledData:
    """The train CSV's labelled images, split as the plan splits them.

    Attributes:
        table: The rows (paths as the CSV has them, ``split`` as the plan's).
        folder: The train data folder the paths are relative to.
        path_column: The image path column.
        mask_column: The mask path column (None: no masks).
        is_ng: True where the row is NG.
    """

    table: pd.DataFrame
    folder: Path
    path_column: str
    mask_column: str | None
    is_ng: np.ndarray

    @property
    def n_ng(self) -> int:
        """NG images (all validation)."""
        return int(self.is_ng.sum())

    @property
    def n_ok(self) -> int:
        """OK images."""
        return int((~self.is_ng).sum())

    @property
    def n_valid_ok(self) -> int:
        """OK images of the plan's validation split (every resample validates on as many)."""
        return int(((self.table[SPLIT].to_numpy() == "valid") & ~self.is_ng).sum())


def labelled_data(plan: Plan) -> LabelledData:
    """Read the plan's train CSV and split it as the readiness step would.

    Args:
        plan: The plan.

    Returns:
        The labelled data.

    Raises:
        DataError: No train data folder, no CSV, or missing columns.
    """
    folder = plan.resolve(plan.external_path.load_train_data_path)
    tables = sorted(folder.glob("*.csv")) if folder is not None and folder.is_dir() else []
    if len(tables) != 1:
        msg = (
            f"data error: tuning needs the train data folder {folder} to hold one ground-truth CSV; found {len(tables)}"
        )
        raise DataError(msg)
    steps = {step.name: step.args for step in plan.pipelines.get("train", [])}
    readiness = steps.get("readiness") or {}
    y_column = readiness.get("y_column", "label")
    path_column = readiness.get("path_column", "image_path")
    split_column = readiness.get("train_validate_column")
    mask_column = readiness.get("mask_column")
    rate = float(readiness.get("validation_split_rate", 0.1))
    table = pd.read_csv(tables[0], dtype=str, skipinitialspace=True)
    for column in (y_column, path_column):
        if column not in table:
            msg = f"data error: the train CSV {tables[0].name} has no column '{column}'; fix readiness args"
            raise DataError(msg)
    table = table[table[y_column].notna() & table[path_column].notna()].reset_index(drop=True)
    labels = table[y_column].astype(str).str.strip()
    ok_class = readiness.get("ok_class") or labels.value_counts().idxmax()
    is_ng = (labels != str(ok_class)).to_numpy()
    inside = [(folder / p).resolve().is_relative_to(folder.resolve()) for p in table[path_column]]
    table, is_ng = table[inside].reset_index(drop=True), is_ng[np.array(inside, dtype=bool)]  # as readiness skips
    if split_column and split_column in table:
        given = table[split_column].astype(str).str.strip().str.lower()
        split = np.where(is_ng | (given == "valid"), "valid", "train")
    else:
        split = np.full(len(table), "train", dtype=object)
        ok = np.flatnonzero(~is_ng)
        count = min(max(round(len(ok) * rate), 1), len(ok) - 1) if len(ok) >= 2 else 0
        chosen = np.random.default_rng(int(steps.get("train", {}).get("experiment_seed", 42))).permutation(ok)[:count]
        split[chosen] = "valid"
        split[is_ng] = "valid"
    table[SPLIT] = split
    return LabelledData(table, folder, path_column, mask_column if mask_column in table else None, is_ng)


def write_resamples(data: LabelledData, folder: Path, count: int, seed: int) -> list[Path]:
    """Write ``count`` resample folders, each with one CSV: the plan's split first, then re-splits.

    Args:
        data: The labelled data.
        folder: Where the resample folders go.
        count: How many resamples.
        seed: Seed of the re-splits.

    Returns:
        The resample folders.
    """
    ok = np.flatnonzero(~data.is_ng)
    n_valid = data.n_valid_ok
    folders = []
    for index in range(count):
        table = data.table.copy()
        if index > 0:
            rng = np.random.default_rng([seed, index])
            split = np.where(data.is_ng, "valid", "train").astype(object)
            split[rng.permutation(ok)[:n_valid]] = "valid"
            table[SPLIT] = split
        target = folder / f"r{index}"
        target.mkdir(parents=True, exist_ok=True)
        for column in filter(None, (data.path_column, data.mask_column)):
            table[column] = [_linked(data.folder, cell, target) for cell in table[column]]
        table.to_csv(target / "labels.csv", index=False)
        folders.append(target)
    return folders


def _linked(source: Path, cell: object, target: Path) -> str:
    """Hard-link (or copy) one file of the data folder under ``target/images``; the CSV cell for it."""
    if not isinstance(cell, str) or not cell.strip():
        return ""
    original = (source / cell).resolve()
    relative = original.relative_to(source.resolve())
    placed = target / "images" / relative
    if not placed.exists():
        placed.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(original, placed)
        except OSError:  # another file system, or links not allowed: a copy
            shutil.copy2(original, placed)
    return f"images/{relative.as_posix()}"
