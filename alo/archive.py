"""``tar.gz`` archives for model hand-off, extracted only inside their target folder."""

from __future__ import annotations

import tarfile
from pathlib import Path

from alo.errors import ModelError


def make_archive(source: Path, archive: Path) -> Path:
    """Pack the contents of ``source`` (not the folder itself) into ``archive``.

    Args:
        source: Folder whose files are archived with paths relative to it.
        archive: The ``.tar.gz`` file to write (replaced atomically).

    Returns:
        The archive path.
    """
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(source.rglob("*")):
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)
    partial.replace(archive)
    return archive


def extract_archive(archive: Path, target: Path) -> Path:
    """Extract a ``.tar.gz`` safely into ``target``.

    Members with absolute paths, ``..`` components, links or device files are refused
    (Python's ``data`` extraction filter), so nothing is written outside ``target``.

    Args:
        archive: The archive file.
        target: An empty or new folder.

    Returns:
        The target folder.

    Raises:
        ModelError: The archive is unreadable, truncated or holds unsafe members.
    """
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        msg = f"model error: cannot extract {archive} ({exc}); re-copy model.tar.gz from a finished train run"
        raise ModelError(msg) from None
    return target
