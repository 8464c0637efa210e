"""Train runs started from the page: one at a time, in a child ``main.py --mode train``, with live progress.

The child runs a plan copy (the user's plan with the chosen data folder, model and arguments; see
:mod:`vad.plan_edit`), so a run from the page is the same run as from the console, under the same project lock.
Its console lines are kept as they arrive. Cancel sends SIGINT to the child's process group: the pipeline
stops, its staged run is moved to ``history/train/{id}-error`` and the previous ``train_artifacts`` stay.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vad.models import MODELS as REGISTERED
from vad.plan_edit import Change, PlanCopy, write_copy

MAIN = Path(__file__).resolve().parents[2] / "main.py"
MAX_LINES = 5000
CANCEL_GRACE_S = 60.0


def offered_models() -> tuple[str, ...]:
    """The models the Train form offers: every registered one, read from the registry when asked."""
    return tuple(REGISTERED)


class JobError(Exception):
    """A train run that cannot start (one runs already, bad choice): the message is for the page."""

    def __init__(self, status: int, message: str) -> None:
        """Keep the HTTP status with the message."""
        super().__init__(message)
        self.status = status


@dataclass
class TrainJob:
    """One train run started from the page."""

    number: int
    plan: PlanCopy
    process: subprocess.Popen
    started: float = field(default_factory=time.time)
    lines: deque = field(default_factory=lambda: deque(maxlen=MAX_LINES))
    first_line: int = 0  # the number of the oldest line kept
    state: str = "running"
    cancelled: bool = False
    returncode: int | None = None

    def view(self, since: int = 0) -> dict[str, Any]:
        """The job as JSON, with the console lines from line ``since`` on.

        Args:
            since: The first line number wanted.

        Returns:
            State, return code, diff of the plan copy, and lines.
        """
        kept = list(self.lines)
        start = max(since, self.first_line)
        return {
            "job": self.number,
            "state": self.state,
            "returncode": self.returncode,
            "plan": self.plan.path.name,
            "diff": self.plan.diff,
            "seconds": round(time.time() - self.started, 1),
            "next": self.first_line + len(kept),
            "lines": kept[start - self.first_line :],
        }


class Trainer:
    """Starts, watches and cancels the page's train runs (one at a time)."""

    def __init__(self, plan_path: Path, data_root: Path | None) -> None:
        """Set the plan to copy and the folder train data must come from.

        Args:
            plan_path: The user's plan.
            data_root: Train data folders must lie inside it (None: training from the page is off).
        """
        self.plan_path = plan_path
        self.data_root = data_root.resolve() if data_root is not None else None
        self.lock = threading.Lock()
        self.job: TrainJob | None = None
        self.count = 0

    def data_folders(self) -> list[str]:
        """Folders inside the data root that hold a ground-truth CSV, relative to it.

        Returns:
            Relative folder paths (``.`` for the root itself), sorted.
        """
        if self.data_root is None:
            return []
        found = set()
        for table in self.data_root.rglob("*.csv"):
            if any(part.startswith(".") for part in table.relative_to(self.data_root).parts):
                continue
            found.add(table.parent.relative_to(self.data_root).as_posix())
            if len(found) >= 500:
                break
        return sorted(found)

    def start(self, folder: str, model: str, max_epochs: int, batch_size: int) -> TrainJob:
        """Start a train run.

        Args:
            folder: A data folder as :meth:`data_folders` lists it.
            model: ``patchcore`` or ``fastflow``.
            max_epochs: Epochs (FastFlow; PatchCore takes one pass).
            batch_size: Images per batch.

        Returns:
            The job.

        Raises:
            JobError: One runs already, or a choice is not allowed.
        """
        if self.data_root is None:
            raise JobError(403, "this server has no data folder: start it with --data-root to train from the page")
        if folder not in self.data_folders():
            raise JobError(400, "choose one of the listed data folders (a folder inside the data root with a CSV)")
        if model not in offered_models():
            raise JobError(400, f"model must be one of {', '.join(offered_models())}")
        if not (1 <= max_epochs <= 1000 and 1 <= batch_size <= 256):
            raise JobError(400, "max_epochs must be 1..1000 and batch_size 1..256")
        with self.lock:
            if self.job is not None and self.job.state == "running":
                raise JobError(409, f"train run {self.job.number} is running; wait for it or cancel it")
            changes = [
                Change(("external_path", "load_train_data_path"), str(self.data_root / folder)),
                Change(("train", "train", "model_name"), model),
                Change(("train", "train", "max_epochs"), max_epochs),
                Change(("train", "train", "batch_size"), batch_size),
            ]
            copy = write_copy(self.plan_path, changes, "train")
            command = [sys.executable, str(MAIN), "--mode", "train", "--config", str(copy.path)]
            process = subprocess.Popen(  # our own interpreter and main.py, arguments as a list
                command,
                cwd=self.plan_path.parent,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: cancel reaches the data loaders too
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self.count += 1
            self.job = TrainJob(self.count, copy, process)
            threading.Thread(target=self._follow, args=(self.job,), daemon=True, name="ui-train").start()
            return self.job

    def _follow(self, job: TrainJob) -> None:
        assert job.process.stdout is not None
        for raw in job.process.stdout:
            if len(job.lines) == job.lines.maxlen:
                job.first_line += 1
            job.lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
        job.returncode = job.process.wait()
        job.state = "cancelled" if job.cancelled else ("succeeded" if job.returncode == 0 else "failed")

    def cancel(self) -> TrainJob:
        """Stop the running train run (SIGINT to its process group; SIGKILL after a grace period).

        Returns:
            The job.

        Raises:
            JobError: No run is running.
        """
        job = self.job
        if job is None or job.state != "running":
            raise JobError(409, "no train run is running")
        job.cancelled = True
        try:
            os.killpg(job.process.pid, signal.SIGINT)
        except ProcessLookupError:
            return job
        threading.Thread(target=self._kill_later, args=(job,), daemon=True, name="ui-train-kill").start()
        return job

    @staticmethod
    def _kill_later(job: TrainJob) -> None:
        try:
            job.process.wait(CANCEL_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.process.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop a running child when the server stops."""
        if self.job is not None and self.job.state == "running":
            self.cancel()
            try:
                self.job.process.wait(CANCEL_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.job.process.pid, signal.SIGKILL)
