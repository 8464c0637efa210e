"""A benchmark's rows, appended to its ``results/*.jsonl`` log (and printed) as they finish."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path


def utc_stamp(minutes: bool = False) -> str:
    """Now, in UTC.

    Args:
        minutes: ``2026-11-23 02:26 UTC`` (what a table quotes) instead of the ISO form.

    Returns:
        The stamp.
    """
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%d %H:%M UTC") if minutes else now.isoformat()


def append_rows(log: Path, rows: Iterable[dict], echo: bool = True) -> None:
    """Append rows to a JSON-lines log, one line each (and print each line).

    Args:
        log: The ``.jsonl`` file.
        rows: The rows (values JSON writes, or anything ``str`` writes).
        echo: Print each line as well.
    """
    with log.open("a", encoding="utf-8") as handle:
        for row in rows:
            line = json.dumps(row, default=str)
            if echo:
                print(line, flush=True)
            handle.write(line + "\n")


def latest_rows(log: Path, key: str = "name") -> dict[str, dict]:
    """The latest row of every measurement in a log.

    Args:
        log: The ``.jsonl`` file.
        key: The field that names a measurement (taken out of the row).

    Returns:
        ``{name: row}``.
    """
    rows = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows[row.pop(key)] = row
    return rows
