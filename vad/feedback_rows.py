"""The engineer's verdicts (``review/feedback.csv``) as training and validation rows of a train run.

OK verdicts join training (the images the model is updated with), NG verdicts join validation (the threshold
is re-derived on them). The rows are added to the run's tables only: the user's training data is never edited.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from alo.errors import DataError
from vad import samples as cols
from vad.review.feedback import read_feedback_file

FEEDBACK_COLUMNS = ("label", "image_path", "verdict_time", "review_id")


def read_verdicts(path: Path) -> pd.DataFrame:
    """The latest verdict per reviewed image (:func:`vad.review.feedback.read_feedback_file`), image paths absolute.

    Args:
        path: The feedback CSV (columns :data:`FEEDBACK_COLUMNS`, image paths relative to its folder).

    Returns:
        Columns ``label``, ``file`` (absolute), ``verdict_time``, ``review_id``, in file order.

    Raises:
        DataError: The file is missing, unreadable or lacks a column.
    """
    try:
        header = pd.read_csv(path, nrows=0).columns
        latest = read_feedback_file(path)
    except (OSError, ValueError) as exc:
        msg = f"data error: the feedback file {path} cannot be read ({exc.__class__.__name__}); review images first"
        raise DataError(msg) from None
    missing = [column for column in FEEDBACK_COLUMNS if column not in header]
    if missing:
        msg = f"data error: the feedback file {path} lacks the column(s) {', '.join(missing)}; the page writes it"
        raise DataError(msg)
    return pd.DataFrame(
        {
            "label": latest["label"].str.strip().to_numpy(),
            "file": [str((path.parent / name).resolve()) for name in latest["image_path"]],
            "verdict_time": latest["verdict_time"].to_numpy(),
            "review_id": latest["review_id"].to_numpy(),
        }
    )


def learnt_review_ids(training: Mapping[str, object]) -> set[str]:
    """The review ids a model learnt by ``main.py --mode update`` (none for a model trained from its data alone).

    Args:
        training: The model's training facts (``train_config.json``'s ``training``).

    Returns:
        The ids of ``training.update.review_ids``.
    """
    update = training.get("update")
    ids = update.get("review_ids") if isinstance(update, dict) else None
    return {str(i) for i in ids} if isinstance(ids, list) else set()


@dataclass(frozen=True)
class FeedbackRows:
    """A train run's tables with the verdicts added.

    Attributes:
        samples: The sample table (readiness's columns).
        frame: The input table (the rows ``output.csv`` is written from).
        ok_files: The images of the OK verdicts (added to training).
        ok_ids: Their review ids (in the same order).
        ng: How many NG verdicts were added to validation.
        review_ids: Every reviewed image used.
    """

    samples: pd.DataFrame
    frame: pd.DataFrame
    ok_files: list[str]
    ok_ids: list[str]
    ng: int
    review_ids: list[str]


def add_verdicts(
    samples: pd.DataFrame, frame: pd.DataFrame, verdicts: pd.DataFrame, readiness: dict, logger: logging.Logger
) -> FeedbackRows:
    """Append verdicts to a train run's sample and input tables: OK ones to training, NG ones to validation.

    A verdict whose image is gone, or whose image is already a row, is left out (logged).

    Args:
        samples: Readiness's sample table.
        frame: The input table.
        verdicts: :func:`read_verdicts`.
        readiness: Readiness's settings (``ok_class``, ``y_column``, ``path_column``, ``train_validate_column``).
        logger: Where the counts are logged.

    Returns:
        The tables with the verdicts' rows.
    """
    present = set(samples[cols.FILE])
    usable = verdicts[[Path(file).is_file() and file not in present for file in verdicts["file"]]]
    if len(usable) < len(verdicts):
        logger.warning(f"{len(verdicts) - len(usable)} verdict(s) left out: their image is gone or already a row")
    is_ng = (usable["label"] != readiness["ok_class"]).to_numpy()
    start = int(max(samples.index.max(), frame.index.max())) + 1 if len(samples) else 0
    index = pd.RangeIndex(start, start + len(usable))
    row_frame = pd.DataFrame(
        {readiness["y_column"]: usable["label"].to_numpy(), readiness["path_column"]: usable["file"].to_numpy()},
        index=index,
    )
    split_column = readiness.get("train_validate_column")
    split = [cols.VALID if ng else cols.TRAIN for ng in is_ng]
    if split_column and split_column in frame.columns:
        row_frame[split_column] = split
    added = {cols.FILE: usable["file"].to_numpy(), cols.LABEL: usable["label"].to_numpy(), cols.IS_NG: is_ng}
    added[cols.SPLIT] = split
    if cols.MASK in samples.columns:
        added[cols.MASK] = [""] * len(usable)
    new_samples = pd.concat([samples, pd.DataFrame(added, index=index)])
    new_frame = pd.concat([frame, row_frame])
    ok_files, ok_ids = list(usable["file"][~is_ng]), list(usable["review_id"][~is_ng])
    ng = int(is_ng.sum())
    logger.info(f"feedback: {len(ok_files)} OK verdict(s) join training, {ng} NG verdict(s) join validation")
    return FeedbackRows(new_samples, new_frame, ok_files, ok_ids, ng, list(usable["review_id"]))
