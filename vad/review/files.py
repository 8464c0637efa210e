"""Append-only text files shared by threads and processes: a lock per folder, whole lines, torn tails ignored.

A writer holds :func:`folder_lock` (a thread lock of this process and an OS file lock, so the scoring service, a
batch run and the edge loop can write the same folder) and appends whole lines with one ``write``. A process
killed mid-write leaves at most a torn last line, without its newline: readers ignore it (:func:`whole_lines`)
and the next writer cuts it off before appending (:func:`append_lines`).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_REGISTRY = threading.Lock()


def _thread_lock(folder: Path) -> threading.Lock:
    """The one thread lock of a folder in this process."""
    key = str(folder.resolve())
    with _REGISTRY:
        return _THREAD_LOCKS.setdefault(key, threading.Lock())


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's lock (threads of this process, then other processes), creating the folder.

    Args:
        folder: The folder whose files are written.

    Yields:
        Nothing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with _thread_lock(folder), (folder / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def whole_lines(path: Path) -> list[str]:
    """The complete lines of a text file (a last line without its newline is a torn write, left out).

    Args:
        path: The file (missing: no lines).

    Returns:
        The lines, without their newlines.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return lines[:-1]  # the part after the last newline: empty, or a torn write


def append_lines(path: Path, lines: list[str]) -> None:
    """Append whole lines with one write, cutting off a torn last line first (call it under :func:`folder_lock`).

    Args:
        path: The file (created when missing).
        lines: The lines, without newlines.
    """
    if not lines:
        return
    with path.open("a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(max(size - 1, 0))
            if handle.read(1) != b"\n":
                handle.seek(0)
                kept = handle.read().rfind(b"\n") + 1
                handle.truncate(kept)
        handle.write(("\n".join(lines) + "\n").encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def replace_text(path: Path, text: str) -> None:
    """Write a file's whole text through a temporary file and an atomic rename (call it under the lock).

    Args:
        path: The file.
        text: Its new text.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
