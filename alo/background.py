"""A resident process's background file writer: pictures of promoted runs, written off the answer's path.

The edge loop answers a request, promotes its artifacts and takes the next request while one low-priority thread
renders and writes the request's sheddable files (heatmap pictures, :meth:`alo.asset.StepContext.defer_file`)
into the promoted run's folder. The folder is held by a directory descriptor taken at promotion, so a picture
lands in its own run's folder even after a later request has moved that folder to ``history/``. Each picture is
written under a temporary name and renamed: a file is complete or absent, never half written.

The CPU it takes is bounded: the thread runs at a lower priority than the loop (``nice``), it rests after each
file so as to spend at most ``share`` of its time making files, and at most ``capacity`` requests wait for it;
when the line is faster than the thread, the oldest waiting request's pictures are dropped and counted
(:attr:`BackgroundFiles.dropped`), those of a request with a picture to keep first (an NG image's) last, so the
loop never waits for a picture. The pictures of a run pruned from ``history/`` before the thread got to them are
dropped too.

The thread also deletes the runs the loop prunes from ``history/`` (:meth:`BackgroundFiles.remove`), before any
picture: the loop only moves them aside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from alo.asset import DeferredFile
from alo.logs import FRAMEWORK_LOGGER

logger = logging.getLogger(f"{FRAMEWORK_LOGGER}.background")

CAPACITY = 4  # requests whose pictures may wait for the thread
NICE = 10  # how much lower the thread's priority is than the loop's (Linux: per thread)
SHARE = 0.5  # most of the thread's wall time spent making files (it rests the rest)


@dataclass
class _Batch:
    """One request's files: the promoted run's folder (a descriptor) and what to write there."""

    folder_fd: int
    files: list[tuple[PurePosixPath, DeferredFile]]


class BackgroundFiles:
    """One low-priority thread writing the sheddable files of promoted runs (see the module)."""

    def __init__(self, capacity: int = CAPACITY, nice: int = NICE, share: float = SHARE) -> None:
        """Start the thread.

        Args:
            capacity: Requests whose files may wait; beyond it the oldest are dropped.
            nice: The thread's priority below the process's (0: the same).
            share: Most of its wall time the thread spends making files, in (0, 1] (1: it never rests).
        """
        self.capacity = capacity
        self.nice = nice
        self.share = share
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._queue: deque[_Batch] = deque()
        self._removals: deque[Path] = deque()
        self._busy = False
        self._closing = False
        self._draining = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="alo-background-files", daemon=True)
        self._thread.start()

    def submit(self, folder: Path, files: list[tuple[PurePosixPath, DeferredFile]]) -> None:
        """Queue one promoted run's files (dropping the oldest waiting run's files if the queue is full).

        Args:
            folder: The promoted run's folder (its descriptor is taken now).
            files: Each file's path relative to the folder, and how to make it.
        """
        if not files:
            return
        try:
            descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            self._fail(len(files), exc)
            return
        with self._cond:
            self._queue.append(_Batch(descriptor, files))
            while len(self._queue) > self.capacity:
                old = next((b for b in self._queue if not any(f.first for _, f in b.files)), self._queue[0])
                self._queue.remove(old)
                self.dropped += len(old.files)
                os.close(old.folder_fd)
            self._cond.notify_all()

    def remove(self, folder: Path) -> None:
        """Queue a folder to delete (never dropped; deleted before the pictures waiting).

        Args:
            folder: The folder, already moved where nothing else looks.
        """
        with self._cond:
            self._removals.append(folder)
            self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until every queued file is written (a process that stops calls it before it exits).

        Args:
            timeout: Most seconds to wait.

        Returns:
            False when files were still waiting after ``timeout``.
        """
        with self._cond:
            self._draining = True
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: not self._queue and not self._removals and not self._busy, timeout)
            finally:
                self._draining = False

    def close(self, timeout: float) -> None:
        """Write what is queued (for at most ``timeout`` seconds), drop the rest and stop the thread.

        Args:
            timeout: Most seconds to wait for the queued files.
        """
        self.drain(timeout)
        with self._cond:
            self._closing = True
            while self._queue:
                old = self._queue.popleft()
                self.dropped += len(old.files)
                os.close(old.folder_fd)
            self._cond.notify_all()
        self._thread.join(timeout)

    def _work(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # lower this thread only (Linux threads are tasks)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._queue or self._removals or self._closing)
                if self._removals:
                    removal: Path | None = self._removals.popleft()
                elif self._closing and not self._queue:
                    return
                else:
                    removal, batch = None, self._queue.popleft()
                self._busy = True
            if removal is not None:
                shutil.rmtree(removal, ignore_errors=True)
                continue
            try:
                for done, (relative, work) in enumerate(batch.files):
                    if os.fstat(batch.folder_fd).st_nlink == 0:  # the run was pruned from history: nothing to do
                        self.dropped += len(batch.files) - done
                        break
                    started = time.perf_counter()
                    try:
                        _write_at(batch.folder_fd, relative, work.produce(*work.args))
                        self.written += 1
                    except Exception as exc:  # one picture lost, never the loop
                        self._fail(1, exc)
                    self._rest((time.perf_counter() - started) * (1 / self.share - 1))
            finally:
                os.close(batch.folder_fd)

    def _rest(self, seconds: float) -> None:
        """Rest (not while the process is closing, when what is queued is written at once)."""
        with self._cond:
            self._cond.wait_for(lambda: self._closing or self._draining, seconds)

    def _fail(self, count: int, exc: BaseException) -> None:
        self.failed += count
        logger.warning(f"{count} background picture(s) not written ({exc.__class__.__name__}: {str(exc)[:200]})")


def _write_at(folder_fd: int, relative: PurePosixPath, content: bytes) -> None:
    """Write ``content`` at ``relative`` under a folder descriptor: a temporary file, then renamed."""
    parts = relative.parts
    for depth in range(1, len(parts)):
        with contextlib.suppress(FileExistsError):
            os.mkdir("/".join(parts[:depth]), dir_fd=folder_fd)
    temporary = f"{relative}.part"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=folder_fd)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(handle, view) :]
    finally:
        os.close(handle)
    os.rename(temporary, str(relative), src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
