"""Artifact folders written through staging and promoted only when a pipeline succeeds.

Layout under the project folder (the plan's folder)::

    train_artifacts/  inference_artifacts/      the last good run of each pipeline
    history/{train|inference}/{id}/              earlier good runs (with their plan)
    history/{train|inference}/{id}-error/        failed runs, with their logs
    .alo/staging/{pipeline}-{id}/                a run in progress
    .alo/previous-{pipeline}/                    the old artifacts during the swap
    .alo/lock                                    held by the running process
    .alo/trash/                                  runs the edge loop pruned, deleted by its background thread

Promotion is two renames on one filesystem, so a run killed at any point leaves either the
old or the new artifacts in place; :meth:`ArtifactStore.recover` finishes an interrupted swap.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alo.errors import LockError

logger = logging.getLogger("alo.artifacts")

SUBFOLDERS = ("output", "extra_output", "log", "models", "score")
TRASH = "trash"  # .alo/trash/: pruned runs waiting to be deleted by a resident process's background thread
Remover = Callable[[Path], None]

_HELD_LOCKS: set[int] = set()


def _drop_held_locks_in_child() -> None:
    """Point a forked child's copies of the project lock at /dev/null.

    An flock belongs to the open file, which a forked child shares: a child that outlives the run (OpenVINO's
    converter forks one to send telemetry) would hold the project locked after the run has exited. ``dup2`` rather
    than ``close`` keeps the descriptor number valid for the child's own file object, which closes it later.
    """
    if not _HELD_LOCKS:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd in list(_HELD_LOCKS):
            os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_held_locks_in_child)


@contextmanager
def project_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the project folder for the duration of a run.

    The lock is an OS file lock, released by the kernel even when the process is killed.

    Args:
        root: The project folder.

    Yields:
        Nothing.

    Raises:
        LockError: Another run holds the lock.
    """
    internal = root / ".alo"
    internal.mkdir(parents=True, exist_ok=True)
    handle = (internal / "lock").open("a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            msg = f"another run is using {root} (lock {internal / 'lock'}); wait for it to finish, then run again"
            raise LockError(msg) from None
        _HELD_LOCKS.add(handle.fileno())
        handle.seek(0)
        pid = str(os.getpid())
        if handle.read() != pid:  # a resident process locks once per request: the pid is written once
            handle.seek(0)
            handle.truncate()
            handle.write(pid)
            handle.flush()
        yield
    finally:
        _HELD_LOCKS.discard(handle.fileno())
        handle.close()


def folder_size(path: Path) -> int:
    """Return the total size in bytes of the files under ``path`` (links not followed).

    ``os.scandir`` reads each entry's type from the directory listing: about 3x faster than ``Path.rglob`` with a
    ``stat`` per file, which counts when the edge loop archives a run per request.
    """
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    total += folder_size(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return total


# Sizes of history runs already measured in this process, by path and inode (a kept run is not written to
# again): a resident process (the edge loop) measures only the runs added since its last run, not the whole
# history on every run (1,100 kept runs: 650 ms per run before, 1-2 ms after).
_RUN_SIZES: dict[str, tuple[int, int]] = {}


def _run_size(run: os.DirEntry) -> int:
    known = _RUN_SIZES.get(run.path)
    if known is not None and known[0] == run.inode():
        return known[1]
    size = folder_size(Path(run.path))
    _RUN_SIZES[run.path] = (run.inode(), size)
    return size


# Listings of history/{pipeline}/ by folder: its mtime when listed, and run path -> size. A listing is reused
# while the folder's mtime is unchanged, and kept current across this process's own archive and prune (so the
# edge loop does not list thousands of kept runs per request: 4,200 runs cost 100 ms per run to list).
_LISTINGS: dict[str, tuple[int, dict[str, int]]] = {}


def _pipeline_runs(folder: str) -> dict[str, int]:
    """Run folder -> size under one ``history/{pipeline}`` folder."""
    mtime = Path(folder).stat().st_mtime_ns
    known = _LISTINGS.get(folder)
    if known is not None and known[0] == mtime:
        return known[1]
    with os.scandir(folder) as entries:
        runs = {entry.path: _run_size(entry) for entry in entries if entry.is_dir(follow_symlinks=False)}
    _LISTINGS[folder] = (mtime, runs)
    return runs


def _note_change(
    folder: Path, mtime_before: int | None, added: Path | None = None, removed: Path | None = None
) -> None:
    """Keep a listing current after this process changed the folder, if the listing was current before."""
    known = _LISTINGS.get(str(folder))
    if known is None or known[0] != mtime_before:
        return  # listed again on the next prune
    runs = known[1]
    if added is not None:
        runs[str(added)] = folder_size(added)
    if removed is not None:
        runs.pop(str(removed), None)
    _LISTINGS[str(folder)] = (Path(folder).stat().st_mtime_ns, runs)


def _mtime(folder: Path) -> int | None:
    try:
        return Path(folder).stat().st_mtime_ns
    except OSError:
        return None


def _run_id_of(folder: Path) -> str:
    record = folder / "log" / "experimental_history.json"
    try:
        return str(json.loads(record.read_text(encoding="utf-8"))["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"unknown-{int(folder.stat().st_mtime)}"


class ArtifactStore:
    """The artifact folders of one pipeline in one project folder."""

    def __init__(self, root: Path, pipeline: str, run_id: str) -> None:
        self.root = root
        self.pipeline = pipeline
        self.run_id = run_id
        self.final = root / f"{pipeline}_artifacts"
        self.internal = root / ".alo"
        self.staging = self.internal / "staging" / f"{pipeline}-{run_id}"
        self.previous = self.internal / f"previous-{pipeline}"
        self.history = root / "history" / pipeline

    def recover(self) -> None:
        """Finish or undo a swap or run that was interrupted, so the folders are consistent."""
        if self.previous.exists():
            if self.final.exists():
                logger.warning(f"finishing an interrupted promotion: archiving {self.previous}")
                self._archive(self.previous, _run_id_of(self.previous))
            else:
                logger.warning(f"restoring {self.final} from an interrupted promotion")
                self.previous.replace(self.final)
        staging_root = self.internal / "staging"
        if staging_root.is_dir():
            for stale in sorted(staging_root.glob(f"{self.pipeline}-*")):
                if stale != self.staging:
                    run_id = stale.name.removeprefix(f"{self.pipeline}-")
                    logger.warning(f"keeping interrupted run {run_id} as history/{self.pipeline}/{run_id}-error")
                    self._archive(stale, f"{run_id}-error")

    def begin(self) -> Path:
        """Create the staging folder of this run.

        Returns:
            The staging folder (the run writes all its artifacts there).
        """
        self.recover()
        for sub in SUBFOLDERS:
            (self.staging / sub).mkdir(parents=True, exist_ok=True)
        return self.staging

    def promote(
        self, backup: bool, backup_size_mb: int, keep_runs: int | None = None, remove: Remover | None = None
    ) -> Path:
        """Make the staged run the current artifacts, keeping the old ones in history.

        Args:
            backup: Keep the replaced artifacts under ``history/``.
            backup_size_mb: Cap of the whole ``history/`` folder in MB (oldest pruned first).
            keep_runs: Cap of this pipeline's runs in ``history/`` (oldest pruned first); None: no cap.
            remove: Deletes the runs the count cap prunes, later (see :func:`prune_count`); None: at once.

        Returns:
            The promoted artifacts folder.
        """
        if self.final.exists():
            self.final.replace(self.previous)
        self.staging.replace(self.final)
        if self.previous.exists():
            if backup:
                self._archive(self.previous, _run_id_of(self.previous))
            else:
                shutil.rmtree(self.previous, ignore_errors=True)
        if keep_runs is not None:
            prune_count(self.history, keep_runs, remove=remove)
        prune_history(self.root / "history", backup_size_mb)
        return self.final

    def fail(self, backup_size_mb: int, keep_runs: int | None = None, remove: Remover | None = None) -> Path | None:
        """Keep a failed run's staging folder as ``history/{pipeline}/{id}-error``.

        Args:
            backup_size_mb: Cap of the whole ``history/`` folder in MB.
            keep_runs: Cap of this pipeline's runs in ``history/`` (the failed run is kept); None: no cap.
            remove: Deletes the runs the count cap prunes, later (see :func:`prune_count`); None: at once.

        Returns:
            Where the failed run was kept, or None if nothing was staged.
        """
        if not self.staging.exists():
            return None
        kept = self._archive(self.staging, f"{self.run_id}-error")
        if keep_runs is not None:
            prune_count(self.history, keep_runs, keep=kept, remove=remove)
        prune_history(self.root / "history", backup_size_mb, keep=kept)
        return kept

    def _archive(self, folder: Path, name: str) -> Path:
        self.history.mkdir(parents=True, exist_ok=True)
        target = self.history / name
        suffix = 1
        while target.exists():
            target = self.history / f"{name}.{suffix}"
            suffix += 1
        before = _mtime(self.history)
        folder.replace(target)
        _note_change(self.history, before, added=target)
        return target


def prune_count(folder: Path, cap: int, keep: Path | None = None, remove: Remover | None = None) -> list[Path]:
    """Delete the oldest runs of one ``history/{pipeline}`` folder until it holds at most ``cap`` runs.

    Args:
        folder: The pipeline's history folder.
        cap: Most runs kept.
        keep: A run never to delete (the failed run just kept, for its logs).
        remove: Given, a pruned run is moved (one rename) to ``.alo/trash/`` in the project folder and handed to
            it to delete (the edge loop's background thread: deleting a run's files took 8 to 19 ms of each
            request here); None: deleted at once.

    Returns:
        The folders pruned.
    """
    if not folder.is_dir():
        return []
    runs = _pipeline_runs(str(folder))
    over = len(runs) - cap
    if over <= 0:
        return []
    removed: list[Path] = []
    for name in heapq.nsmallest(over + 1, runs, key=lambda path: path.rpartition(os.sep)[2]):
        run = Path(name)
        if run == keep or len(removed) == over:
            continue
        before = _mtime(folder)
        _discard(run, folder.parent.parent / ".alo" / TRASH, remove)
        _note_change(folder, before, removed=run)
        _RUN_SIZES.pop(name, None)
        removed.append(run)
    logger.debug(f"history/{folder.name} holds over {cap} runs: removed the {len(removed)} oldest")
    return removed


def _discard(run: Path, trash: Path, remove: Remover | None) -> None:
    """Delete a run folder now, or move it into ``trash`` and hand it to ``remove``."""
    if remove is not None:
        target = trash / f"{run.parent.name}-{run.name}"
        try:
            trash.mkdir(parents=True, exist_ok=True)
            run.replace(target)
        except OSError:  # deleted here after all
            pass
        else:
            remove(target)
            return
    shutil.rmtree(run, ignore_errors=True)


def prune_history(history: Path, cap_mb: int, keep: Path | None = None) -> list[Path]:
    """Delete the oldest runs under ``history/`` until it fits in ``cap_mb``.

    Args:
        history: The history folder (with ``train/`` and ``inference/`` inside).
        cap_mb: Size cap in MB.
        keep: A run never to delete (the failed run just kept, for its logs).

    Returns:
        The folders deleted.
    """
    if not history.is_dir():
        return []
    sizes: dict[str, int] = {}
    with os.scandir(history) as pipelines:
        for pipeline in pipelines:
            if pipeline.is_dir(follow_symlinks=False):
                sizes.update(_pipeline_runs(pipeline.path))
    total = sum(sizes.values())
    removed: list[Path] = []
    if total <= cap_mb * 1024 * 1024:
        return removed
    # Oldest first by run id (ids sort by start time), across pipelines. A heap: the edge loop prunes one or two
    # runs per request from thousands, and a full sort by basename cost 4 ms of each request there.
    oldest = [(name.rpartition(os.sep)[2], name) for name in sizes]
    heapq.heapify(oldest)
    while oldest and total > cap_mb * 1024 * 1024:
        name = heapq.heappop(oldest)[1]
        run = Path(name)
        if run == keep:
            continue
        before = _mtime(run.parent)
        shutil.rmtree(run, ignore_errors=True)
        _note_change(run.parent, before, removed=run)
        _RUN_SIZES.pop(name, None)
        total -= sizes[name]
        removed.append(run)
        logger.info(f"history is over {cap_mb} MB: removed the oldest run {run.parent.name}/{run.name}")
    return removed
