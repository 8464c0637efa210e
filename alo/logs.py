"""Logging: ``process.log`` (framework), ``pipeline.log`` (steps), console at INFO.

Each line reads ``[time|source|LEVEL|file(line)|function] message``. Files get DEBUG.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT = "[%(asctime)s|%(name)s|%(levelname)s|%(filename)s(%(lineno)d)|%(funcName)s] %(message)s"
FRAMEWORK_LOGGER = "alo"
PIPELINE_LOGGER = "assets"


def _formatter() -> logging.Formatter:
    formatter = logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    formatter.converter = time.gmtime
    return formatter


FILE_ONLY = {"file_only": True}
"""Pass as ``extra=`` to keep a record out of the console (``main.py`` prints the error line itself)."""


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def setup_console(debug: bool = False) -> None:
    """Send framework and pipeline messages to the console.

    Args:
        debug: Show DEBUG messages too.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter())
    handler.setLevel(logging.DEBUG if debug else logging.INFO)
    handler.set_name("alo-console")
    handler.addFilter(_not_file_only)
    for name in (FRAMEWORK_LOGGER, PIPELINE_LOGGER):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        for old in [h for h in logger.handlers if h.get_name() == "alo-console"]:
            logger.removeHandler(old)  # a second call (tests, embedding) writes to the current stderr
        logger.addHandler(handler)


@contextmanager
def log_files(log_dir: Path) -> Iterator[None]:
    """Write ``process.log`` and ``pipeline.log`` into ``log_dir`` for the duration of a run.

    Args:
        log_dir: The run's log folder.

    Yields:
        Nothing; the files are closed on exit.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[tuple[logging.Logger, logging.Handler]] = []
    for name, file_name in ((FRAMEWORK_LOGGER, "process.log"), (PIPELINE_LOGGER, "pipeline.log")):
        handler = logging.FileHandler(log_dir / file_name, encoding="utf-8")
        handler.setFormatter(_formatter())
        handler.setLevel(logging.DEBUG)
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        handlers.append((logger, handler))
    try:
        yield
    finally:
        for logger, file_handler in handlers:
            logger.removeHandler(file_handler)
            file_handler.close()


class Progress:
    """Log progress of long work at INFO, at most every ``every_s`` seconds and at the end."""

    def __init__(self, logger: logging.Logger, what: str, total: int, every_s: float = 10.0) -> None:
        self.logger = logger
        self.what = what
        self.total = max(int(total), 0)
        self.every_s = every_s
        self.done = 0
        self.start = time.perf_counter()
        self.last = self.start

    def update(self, count: int = 1) -> None:
        """Record ``count`` more items done, logging when due.

        Args:
            count: Items finished since the last call.
        """
        self.done += count
        now = time.perf_counter()
        if self.done >= self.total or now - self.last >= self.every_s:
            self.last = now
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            self.logger.info(f"{self.what}: {self.done}/{self.total} ({rate:.1f}/s, {elapsed:.1f}s)", stacklevel=2)
