"""One kept image as ``review/index.jsonl`` records it (one JSON object a line), and the index read back.

Each line has ``id``, ``time`` (UTC ISO), ``origin`` (``inference``, ``loop`` or ``http``), ``source`` (the scored
file's path or the upload's name, as text only), ``image`` (its copy, relative to ``review/``), the scores
``anomaly_score``, ``raw_score``, ``pred_label``, ``certainty``, ``ood_score``, ``in_distribution`` (null where
absent), ``label`` (the known label, or null), ``train_id`` (the model's train run, or null), and ``bytes`` and
``sha256`` of the copy (the size cap, and the same picture kept once).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import TypeAdapter, ValidationError

INDEX = "index.jsonl"
IMAGES = "images"
ORIGINS = ("inference", "loop", "http")
Origin = Literal["inference", "loop", "http"]
ID_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{8}$")  # what new_id makes: a file name of its own


@dataclass(frozen=True)
class ScoredImage:
    """What a consumer scored for one image (the ``output.csv`` columns it has).

    Attributes:
        source: The scored file's path or the upload's name (recorded as text, never used as a path).
        anomaly_score: The normalised score (threshold at 0.5).
        pred_label: The predicted label (``rejected`` where the verdict was withheld).
        raw_score: The model's own score.
        certainty: ``1 - H2(anomaly_score)``.
        ood_score: The out-of-distribution distance (None: no check).
        in_distribution: False for an image out of distribution (None: no check).
        label: The image's known label (labelled inference data), or None.
    """

    source: str
    anomaly_score: float
    pred_label: str
    raw_score: float | None = None
    certainty: float | None = None
    ood_score: float | None = None
    in_distribution: bool | None = None
    label: str | None = None


@dataclass(frozen=True)
class ReviewEntry:
    """One line of ``index.jsonl``: a kept image and what it scored (see the module's docstring)."""

    id: str
    time: str
    origin: str
    source: str
    image: str
    anomaly_score: float
    raw_score: float | None
    pred_label: str
    certainty: float | None
    ood_score: float | None
    in_distribution: bool | None
    label: str | None
    train_id: str | None
    bytes: int
    sha256: str

    def line(self) -> str:
        """The entry as its ``index.jsonl`` line (no newline; NaN as null)."""
        values = {key: _finite(value) for key, value in asdict(self).items()}
        return json.dumps(values, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> ReviewEntry | None:
        """An entry from its line, or None for a line that is not one (damaged, or written by something else).

        Args:
            line: One line of ``index.jsonl``.

        Returns:
            The entry, or None.
        """
        try:
            found = json.loads(line)
        except ValueError:
            return None
        if not isinstance(found, dict):
            return None
        values: dict[str, Any] = {name: found.get(name) for name in _FIELD_NAMES}
        if not isinstance(values["id"], str) or not ID_PATTERN.match(values["id"]):
            return None
        values["bytes"] = values["bytes"] if isinstance(values["bytes"], int) else 0
        values["sha256"] = str(values["sha256"] or "")
        try:
            return _CHECKED.validate_python(values)  # every field of its type (a number as a float)
        except ValidationError:
            return None


_FIELD_NAMES = tuple(item.name for item in fields(ReviewEntry))
_CHECKED = TypeAdapter(ReviewEntry)


def _finite(value: Any) -> Any:
    """A value for JSON: a NaN or infinite float as None (JSON has no NaN)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class _ReadSoFar:
    """What :func:`read_index` parsed of one index file: its identity, how far, its last line, the entries."""

    identity: tuple[int, int]
    offset: int
    last_line: bytes
    entries: list[ReviewEntry]


_READ: dict[str, _ReadSoFar] = {}
_READ_LOCK = threading.Lock()


def read_index(folder: Path) -> list[ReviewEntry]:
    """The entries of ``folder/index.jsonl`` in the order they were kept (a torn or damaged line is left out).

    The index only grows by whole lines, or is replaced whole (a new file: pruning), so what was parsed is kept
    and only the lines appended since are read: the scoring service keeps images after every request. The
    parsed part is trusted while the file is the same one (device and inode) and its last parsed line still ends
    where it did (a rewrite that dropped an earlier line moves it).

    Args:
        folder: The review folder.

    Returns:
        The entries, oldest first.
    """
    path = folder / INDEX
    try:
        with path.open("rb") as handle:
            status = os.fstat(handle.fileno())
            identity = (status.st_dev, status.st_ino)
            with _READ_LOCK:
                known = _READ.get(str(path))
            if known is None or known.identity != identity or not _still_ends(handle, known):
                known = _ReadSoFar(identity, 0, b"", [])
            handle.seek(known.offset)
            added = handle.read()
    except FileNotFoundError:
        return []
    end = added.rfind(b"\n") + 1  # the part after the last newline: a torn write, read again next time
    if end:
        lines = added[:end].decode("utf-8", errors="replace").split("\n")[:-1]
        parsed = [ReviewEntry.from_line(line) for line in lines if line.strip()]
        last = added[: end - 1].rsplit(b"\n", 1)[-1] + b"\n"
        found = [*known.entries, *(entry for entry in parsed if entry is not None)]
        known = _ReadSoFar(identity, known.offset + end, last, found)
    with _READ_LOCK:
        _READ[str(path)] = known
    return list(known.entries)


def _still_ends(handle: BinaryIO, known: _ReadSoFar) -> bool:
    """Whether the file still holds the last parsed line where it ended."""
    start = known.offset - len(known.last_line)
    if start < 0:
        return False
    handle.seek(start)
    return handle.read(len(known.last_line)) == known.last_line


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def iso_time(moment: datetime) -> str:
    """A time as UTC ISO 8601 with milliseconds (``2026-12-07T20:01:02.123+00:00``)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")
