"""Jobs started from the page: one at a time, in a child ``main.py``, with live progress.

Two kinds: a train run (``main.py --mode train``) and a model update from the verdicts (``main.py --mode
update``, :mod:`apps.update_command`). A train run's child runs a plan copy (the user's plan with the chosen data
folder, model and arguments; see :mod:`vad.plan_edit`), an update's the user's plan itself, so a job from the page
is the same run as from the console, under the same project lock. Its console lines are kept as they arrive.
Cancel sends SIGINT to the child's process group: the pipeline stops, its staged run is moved to
``history/train/{id}-error`` and the previous ``train_artifacts`` (the active model version) stay.
:meth:`Trainer.exclusive` lets quick in-process work (a rollback) run only while no job does.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from vad.models import MODELS as REGISTERED
from vad.plan_edit import Change, write_copy

MAIN = Path(__file__).resolve().parents[2] / "main.py"
MAX_LINES = 5000
CANCEL_GRACE_S = 60.0


def offered_models() -> tuple[str, ...]:
    """The models the Train form offers: every registered one, read from the registry when asked."""
    return tuple(REGISTERED)


class JobError(Exception):
    """A job that cannot start (one runs already, bad choice): the message is for the page."""

    def __init__(self, status: int, message: str) -> None:
        """Keep the HTTP status with the message."""
        super().__init__(message)
        self.status = status


JobKind = Literal["train", "update"]
JobState = Literal["running", "succeeded", "failed", "cancelled"]


class JobView(BaseModel):
    """A job as the page shows it, with its console lines from a given line on."""

    job: int = Field(description="the job's number in this server process (1, 2, ...)")
    kind: JobKind = Field(description="train: main.py --mode train; update: main.py --mode update")
    state: JobState
    returncode: int | None = Field(description="the child's exit status once it ended")
    plan: str = Field(description="the plan the child runs (a train run's plan copy, or the user's plan)")
    diff: str = Field(description="a train run's changes to the user's plan (empty for an update)")
    seconds: float = Field(description="seconds since it started")
    next: int = Field(description="the line number to ask for next (since=...)")
    lines: list[str] = Field(description="console lines from the asked-for line on")


@dataclass
class TrainJob:
    """One job started from the page (a train run or a model update)."""

    number: int
    kind: JobKind
    plan: Path
    diff: str
    process: subprocess.Popen
    started: float = field(default_factory=time.time)
    lines: deque = field(default_factory=lambda: deque(maxlen=MAX_LINES))
    first_line: int = 0  # the number of the oldest line kept
    state: JobState = "running"
    cancelled: bool = False
    returncode: int | None = None

    def view(self, since: int = 0) -> JobView:
        """The job as the page shows it, with the console lines from line ``since`` on.

        Args:
            since: The first line number wanted.

        Returns:
            Kind, state, return code, plan and its diff, and lines.
        """
        kept = list(self.lines)
        start = max(since, self.first_line)
        return JobView(
            job=self.number,
            kind=self.kind,
            state=self.state,
            returncode=self.returncode,
            plan=self.plan.name,
            diff=self.diff,
            seconds=round(time.time() - self.started, 1),
            next=self.first_line + len(kept),
            lines=kept[start - self.first_line :],
        )

    @property
    def running(self) -> bool:
        """Whether the child still runs."""
        return self.state == "running"


class Trainer:
    """Starts, watches and cancels the page's jobs, train runs and model updates (one at a time)."""

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
            self._refuse_while_running()
            changes = [
                Change(("external_path", "load_train_data_path"), str(self.data_root / folder)),
                Change(("train", "train", "model_name"), model),
                Change(("train", "train", "max_epochs"), max_epochs),
                Change(("train", "train", "batch_size"), batch_size),
            ]
            copy = write_copy(self.plan_path, changes, "train")
            return self._launch("train", copy.path, copy.diff)

    def start_update(self) -> TrainJob:
        """Start ``main.py --mode update`` on the user's plan (the verdicts not yet learnt, as a new version).

        Returns:
            The job.

        Raises:
            JobError: A job runs already.
        """
        with self.lock:
            self._refuse_while_running()
            return self._launch("update", self.plan_path, "")

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold off new jobs while quick in-process work runs (a rollback); refused while a job runs.

        Yields:
            Nothing.

        Raises:
            JobError: A job runs.
        """
        with self.lock:
            self._refuse_while_running()
            yield

    def _refuse_while_running(self) -> None:
        if self.job is not None and self.job.running:
            what = "train run" if self.job.kind == "train" else "model update"
            raise JobError(409, f"{what} {self.job.number} is running; wait for it or cancel it")

    def _launch(self, kind: JobKind, plan: Path, diff: str) -> TrainJob:
        """Start the child ``main.py --mode {kind} --config {plan}`` (call it holding :attr:`lock`)."""
        command = [sys.executable, str(MAIN), "--mode", kind, "--config", str(plan)]
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
        self.job = TrainJob(self.count, kind, plan, diff, process)
        threading.Thread(target=self._follow, args=(self.job,), daemon=True, name=f"ui-{kind}").start()
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
        """Stop the running job (SIGINT to its process group; SIGKILL after a grace period).

        Returns:
            The job.

        Raises:
            JobError: No job is running.
        """
        job = self.job
        if job is None or not job.running:
            raise JobError(409, "no train run or model update is running")
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
        if self.job is not None and self.job.running:
            self.cancel()
            try:
                self.job.process.wait(CANCEL_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.job.process.pid, signal.SIGKILL)
