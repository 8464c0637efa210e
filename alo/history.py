"""Run ids and the ``experimental_history.json`` record of each run."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def new_run_id(plan_name: str, now: datetime | None = None) -> str:
    """Make a run id ``{UTC yyyymmddThhmmssZ}-{random}-{plan name}``.

    Args:
        plan_name: The plan's ``name``.
        now: The start time (UTC); defaults to now.

    Returns:
        The id; it sorts by start time.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}-{_UNSAFE.sub('_', plan_name)}"


def hash_files(paths: list[Path], base: Path) -> str:
    """Hash file names (relative to ``base``), sizes and contents into a short id.

    Args:
        paths: The files.
        base: Folder the names are taken relative to.

    Returns:
        A 16-hex-digit id.
    """
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            name = path.relative_to(base).as_posix()
        except ValueError:
            name = path.as_posix()
        digest.update(name.encode("utf-8"))
        if path.is_file():
            with path.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


def hash_object(value: Any) -> str:
    """Hash a JSON-serialisable object into a short id (key order does not matter).

    Args:
        value: The object.

    Returns:
        A 16-hex-digit id.
    """
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def hash_code(package_dir: Path) -> str:
    """Hash the Python sources of a package folder.

    Args:
        package_dir: The folder.

    Returns:
        A 16-hex-digit id.
    """
    return hash_files([p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts], package_dir)


def write_record(path: Path, record: dict[str, Any]) -> Path:
    """Write a run record as pretty JSON.

    Args:
        path: ``log/experimental_history.json`` of the run.
        record: The record.

    Returns:
        The path written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path
