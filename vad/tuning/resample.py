"""Resamples of the user's labelled images for the tuner: the plan's own split, then stratified re-splits.

The labelled images are what the plan's own ``input`` and ``readiness`` steps make of the train data (the
same encoding, skipped rows, OK class, split and masks; their errors are the tuner's). Only OK images are
fitted and every NG image is validation (as the readiness step does), so a re-split keeps every NG image in
validation and draws, with its own seed, as many OK validation images as the plan's split holds; the rest of
the OK images train. Each resample is a folder with a UTF-8 CSV (a ``tuning_split`` column) and the images
hard-linked (copied across file systems) under ``images/``: the readiness step refuses paths outside the
data folder, and a trial's plan points ``load_train_data_path`` at the resample's folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from alo.errors import PlanError
from alo.plan import Plan
from vad.samples import FILE, IS_NG, MASK, SPLIT, TRAIN, VALID


@runtime_checkable
class _ImageColumns(Protocol):
    """What this module reads of the readiness step's arguments (the step itself lives above the library)."""

    @property
    def path_column(self) -> str:
        """The image path column."""
        ...

    @property
    def mask_column(self) -> str:
        """The mask path column."""
        ...


SPLIT_COLUMN = "tuning_split"  # a name of its own: the user's columns (a "split" one, say) stay as they are
SPLIT_STEPS = ("input", "readiness")


@dataclass(frozen=True)
class LabelledData:
    """The train CSV's usable labelled images, split as the plan splits them.

    Attributes:
        table: The rows as the CSV has them (cleaned by readiness), :data:`SPLIT_COLUMN` as the plan splits them.
        folder: The train data folder.
        files: Each row's image file (absolute).
        masks: Each row's mask file (absolute, "" for none), or None when the CSV has no mask column.
        path_column: The image path column.
        mask_column: The mask path column (None: no masks).
        is_ng: True where the row is NG.
    """

    table: pd.DataFrame
    folder: Path
    files: list[str]
    masks: list[str] | None
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
        return int(((self.table[SPLIT_COLUMN].to_numpy() == VALID) & ~self.is_ng).sum())


def labelled_data(plan: Plan, package: str = "assets") -> LabelledData:
    """Run the plan's own ``input`` and ``readiness`` train steps on its train data, and keep what they split.

    Args:
        plan: The plan.
        package: The solution package holding the steps.

    Returns:
        The labelled data.

    Raises:
        PlanError: The train pipeline lacks those steps.
        DataError: What the readiness step refuses (no CSV, a missing column, no OK image to fit, ...).
    """
    from alo.asset import StepContext
    from alo.logs import PIPELINE_LOGGER
    from alo.runner import data_path_of, prepare

    steps = {step.name: step for step in prepare(plan, "train", package)}
    missing = [name for name in SPLIT_STEPS if name not in steps]
    if missing:
        msg = f"plan error: tuning needs the train pipeline's {' and '.join(missing)} step(s); add them to the plan"
        raise PlanError(msg)
    data_path = data_path_of(plan, "train")
    data: dict[str, Any] = {}
    config: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vad-tune-") as work:  # readiness writes its config into the model
        for name in SPLIT_STEPS:
            step = steps[name]
            ctx = StepContext(
                pipeline="train",
                step=name,
                args=step.args,
                run_id="tune",
                plan=plan,
                artifacts=Path(work),
                data_path=data_path,
                model_dir=Path(work) / "models",
                logger=logging.getLogger(f"{PIPELINE_LOGGER}.{name}"),
            )
            data, config = step.asset().run(ctx, data, config)
    samples: pd.DataFrame = data["samples"]
    readiness_args = steps["readiness"].args
    if not isinstance(readiness_args, _ImageColumns):
        msg = f"the readiness step's arguments ({type(readiness_args).__name__}) name no image and mask columns"
        raise TypeError(msg)
    original = [str(column) for column in data["dataframe"].columns]
    table = samples[original].reset_index(drop=True)
    table[SPLIT_COLUMN] = samples[SPLIT].to_numpy()
    masks = [str(m) for m in samples[MASK]] if MASK in samples else None
    return LabelledData(
        table=table,
        folder=data_path,
        files=[str(f) for f in samples[FILE]],
        masks=masks,
        path_column=readiness_args.path_column,
        mask_column=readiness_args.mask_column if masks is not None else None,
        is_ng=samples[IS_NG].to_numpy(dtype=bool),
    )


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
            split = np.where(data.is_ng, VALID, TRAIN).astype(object)
            split[rng.permutation(ok)[:n_valid]] = VALID
            table[SPLIT_COLUMN] = split
        target = folder / f"r{index}"
        target.mkdir(parents=True, exist_ok=True)
        table[data.path_column] = [_linked(data.folder, file, target) for file in data.files]
        if data.masks is not None and data.mask_column is not None:
            table[data.mask_column] = [_linked(data.folder, mask, target) if mask else "" for mask in data.masks]
        table.to_csv(target / "labels.csv", index=False, encoding="utf-8")
        folders.append(target)
    return folders


def _linked(source: Path, file: str, target: Path) -> str:
    """Hard-link (or copy) one file under ``target/images``; its CSV cell.

    A file of the data folder keeps its relative path there; one outside it (a mask may be) goes under
    ``_outside/<hash of its folder>/``.
    """
    original = Path(file)
    root = source.resolve()
    if original.is_relative_to(root):
        relative = original.relative_to(root)
    else:
        relative = Path("_outside", hashlib.sha1(str(original.parent).encode("utf-8")).hexdigest()[:12], original.name)
    placed = target / "images" / relative
    if not placed.exists():
        placed.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(original, placed)
        except OSError:  # another file system, or links not allowed: a copy
            shutil.copy2(original, placed)
    return f"images/{relative.as_posix()}"
