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
import re
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from vad.review.files import whole_lines

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
        names = [item.name for item in fields(cls)]
        values: dict[str, Any] = {name: found.get(name) for name in names}
        if not isinstance(values["id"], str) or not ID_PATTERN.match(values["id"]):
            return None
        if not isinstance(values["image"], str) or not isinstance(values["anomaly_score"], int | float):
            return None
        values["bytes"] = int(values["bytes"] or 0)
        values["sha256"] = str(values["sha256"] or "")
        return cls(**values)


def _finite(value: Any) -> Any:
    """A value for JSON: a NaN or infinite float as None (JSON has no NaN)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_index(folder: Path) -> list[ReviewEntry]:
    """The entries of ``folder/index.jsonl`` in the order they were kept (a torn or damaged line is left out).

    Args:
        folder: The review folder.

    Returns:
        The entries, oldest first.
    """
    entries = [ReviewEntry.from_line(line) for line in whole_lines(folder / INDEX) if line.strip()]
    return [entry for entry in entries if entry is not None]


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def iso_time(moment: datetime) -> str:
    """A time as UTC ISO 8601 with milliseconds (``2026-12-07T20:01:02.123+00:00``)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")
