"""Verdicts on kept images, appended to ``review/feedback.csv`` in the train data's format.

Columns, in order: ``label`` (the model's OK class name for an OK verdict, its NG name for an NG one),
``image_path`` (the kept copy, relative to ``review/``: ``images/<id>.png``), ``verdict_time`` (UTC ISO),
``review_id``, ``pred_label`` and ``anomaly_score`` (what the model said). ``review/`` is thus a train data folder
of its own (one CSV, paths relative to it), and the user's train data is never touched. A later verdict on the
same image supersedes an earlier one: :func:`read_feedback` returns the latest per ``review_id`` (file order).
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from vad.review.entries import ReviewEntry, iso_time, utc_now
from vad.review.files import append_lines, folder_lock, whole_lines

FEEDBACK = "feedback.csv"
COLUMNS = ("label", "image_path", "verdict_time", "review_id", "pred_label", "anomaly_score")


@dataclass(frozen=True)
class Verdict:
    """A person's verdict on one kept image.

    Attributes:
        entry: The kept image.
        is_ng: True for NG (defective), False for OK.
    """

    entry: ReviewEntry
    is_ng: bool


def write_verdicts(
    folder: Path, verdicts: Sequence[Verdict], ok_name: str, ng_name: str, when: datetime | None = None
) -> int:
    """Append one ``feedback.csv`` row per verdict (the header first when the file is new).

    Args:
        folder: The review folder.
        verdicts: The verdicts.
        ok_name: The model's OK class name (the label of an OK verdict).
        ng_name: The model's NG name (the label of an NG verdict).
        when: The verdicts' time (default: now).

    Returns:
        How many rows were written.
    """
    if not verdicts:
        return 0
    stamp = iso_time(when or utc_now())
    rows = [
        [ng_name if v.is_ng else ok_name, v.entry.image, stamp, v.entry.id, v.entry.pred_label, v.entry.anomaly_score]
        for v in verdicts
    ]
    path = folder / FEEDBACK
    with folder_lock(folder):
        header = [] if whole_lines(path) else [_csv_line(COLUMNS)]
        append_lines(path, header + [_csv_line(row) for row in rows])
    return len(rows)


def _csv_line(cells: Sequence[object]) -> str:
    """One CSV line (quoted where a cell needs it), without its newline."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue().rstrip("\n")


def read_feedback(folder: Path) -> pd.DataFrame:
    """The verdicts of ``feedback.csv``, the latest per ``review_id`` (in file order).

    A torn last line (a write cut short) is left out. The table read is kept while the file's identity, size and
    modification time stay the same (the scoring service asks after every request).

    Args:
        folder: The review folder.

    Returns:
        A table with :data:`COLUMNS` (empty when there are no verdicts).
    """
    path = folder / FEEDBACK
    try:
        status = path.stat()
    except FileNotFoundError:
        return pd.DataFrame(columns=list(COLUMNS))
    stamp = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    with _READ_LOCK:
        known = _READ.get(str(path))
    if known is not None and known[0] == stamp:
        return known[1].copy()
    table = read_feedback_file(path)
    with _READ_LOCK:
        _READ[str(path)] = (stamp, table)
    return table.copy()


_READ: dict[str, tuple[tuple[int, int, int, int], pd.DataFrame]] = {}
_READ_LOCK = threading.Lock()


def read_feedback_file(path: Path) -> pd.DataFrame:
    """A feedback CSV read whole: the latest verdict per ``review_id`` of its complete, well-formed rows.

    A row without a label or a review id, or with another number of cells than the header (a hand edit gone
    wrong), is left out rather than stopping whatever reads the verdicts.

    Args:
        path: The file.

    Returns:
        A table with :data:`COLUMNS`, in file order.
    """
    rows = [next(csv.reader([line]), []) for line in whole_lines(path)]  # one line a row: a stray quote stays in it
    if len(rows) < 2:
        return pd.DataFrame(columns=list(COLUMNS))
    header = rows[0]
    records = [dict(zip(header, row, strict=True)) for row in rows[1:] if len(row) == len(header)]
    table = pd.DataFrame(records, columns=header).reindex(columns=list(COLUMNS))
    table = table[table["review_id"].fillna("").ne("") & table["label"].fillna("").ne("")]
    table["anomaly_score"] = pd.to_numeric(table["anomaly_score"], errors="coerce")
    return table.drop_duplicates("review_id", keep="last").reset_index(drop=True)


def reviewed_ids(folder: Path) -> set[str]:
    """The ids of the kept images that have a verdict.

    Args:
        folder: The review folder.

    Returns:
        The ``review_id`` values of ``feedback.csv``.
    """
    return set(read_feedback(folder)["review_id"])
