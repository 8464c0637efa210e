"""The step (asset) contract and how steps are found by name.

A step is an object with ``run(ctx, data, config) -> (data, config)``. It reads its validated
arguments, paths and logger from ``ctx``, may add keys to ``data`` and ``config`` and must
never remove one. A solution package (``assets`` by default) provides one module per step
name; the module exposes the step class as ``ASSET``.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from alo.args import StepArgs, suggest
from alo.errors import PlanError
from alo.plan import Plan

Data = dict[str, Any]
Config = dict[str, Any]


@dataclass(frozen=True)
class DeferredFile:
    """A file a run may write after it is promoted (a heatmap picture): the bytes ``produce(*args)`` returns.

    Attributes:
        path: Where it goes in the staged artifacts.
        produce: Makes the file's content.
        args: Its arguments.
        first: Kept before the others when a background thread must drop some (an NG image's picture).
    """

    path: Path
    produce: Callable[..., bytes]
    args: tuple[Any, ...]
    first: bool = False

    def write(self) -> None:
        """Make the file and write it at ``path`` (its folder created)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(self.produce(*self.args))


class DeferredWork:
    """Writes into the staged artifacts that a run's answer does not depend on (heatmap files, say).

    The runner runs them once every step has succeeded and a resident process has answered (ALO's edge loop
    sends the inference summary first, the artifacts after), and always before the run's artifacts are
    promoted: a run is only finished, and only successful, once they are done. At most ``limit`` wait at a
    time; beyond that the oldest runs at once, so a long run holds no more than ``limit`` in memory.

    A resident process may take the sheddable files (:meth:`StepContext.defer_file`) off the run instead
    (:meth:`take_files`), to write them into the promoted run from a background thread; it sets ``background``
    first, and those files are then queued without a limit (a step makes them cheap to hold: no pictures).
    """

    def __init__(self, limit: int = 8) -> None:
        """Start with nothing queued.

        Args:
            limit: Most queued items at a time.
        """
        self.limit = limit
        self._queue: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._files: deque[DeferredFile] = deque()
        self.background = False

    def __len__(self) -> int:
        return len(self._queue) + len(self._files)

    def add_file(self, file: DeferredFile) -> None:
        """Queue a sheddable file; write the oldest queued one at once if the files' queue is full.

        Args:
            file: The file.
        """
        self._files.append(file)
        while len(self._files) > self.limit and not self.background:
            self._files.popleft().write()

    def take_files(self) -> list[DeferredFile]:
        """The sheddable files still queued, removed from the queue (the caller writes them, or not).

        Returns:
            The files, oldest first.
        """
        files = list(self._files)
        self._files.clear()
        return files

    def add(self, function: Callable[..., object], *args: Any) -> None:
        """Queue ``function(*args)``; run the oldest queued item if the queue is full.

        Args:
            function: What to run.
            *args: Its arguments.
        """
        self._queue.append((function, args))
        while len(self._queue) > self.limit:
            self._run_one()

    def run(self) -> None:
        """Run everything queued, oldest first, then write the files (the first failure is raised)."""
        while self._queue:
            self._run_one()
        while self._files:
            self._files.popleft().write()

    def _run_one(self) -> None:
        function, args = self._queue.popleft()
        function(*args)


StepArgsT = TypeVar("StepArgsT", bound=StepArgs)


@dataclass(frozen=True)
class StepContext:
    """What a step may know about the run it is part of.

    Attributes:
        pipeline: ``train`` or ``inference``.
        step: The step's name.
        args: The step's validated arguments.
        run_id: The id of this run.
        plan: The validated plan.
        artifacts: The staging folder of this pipeline's artifacts (promoted on success).
        data_path: The pipeline's input data folder, if the plan names one.
        model_dir: Where train writes models and inference reads them (``.../models``).
        logger: The step's logger (``pipeline.log``).
        deferred: Where :meth:`defer` queues work (None: it runs at once).
    """

    pipeline: str
    step: str
    args: StepArgs
    run_id: str
    plan: Plan
    artifacts: Path
    data_path: Path | None
    model_dir: Path
    logger: logging.Logger
    deferred: DeferredWork | None = None

    def args_as(self, kind: type[StepArgsT]) -> StepArgsT:
        """The step's arguments as its own class (the one :meth:`Asset.arguments` named for this pipeline).

        Args:
            kind: The step's argument class.

        Returns:
            ``args``, checked to be a ``kind``.

        Raises:
            TypeError: The arguments are of another class.
        """
        if not isinstance(self.args, kind):
            msg = f"step {self.step} got {type(self.args).__name__} arguments, not {kind.__name__}"
            raise TypeError(msg)
        return self.args

    def defer(self, function: Callable[..., object], *args: Any) -> None:
        """Write something into the staged artifacts after the run's answer (see :class:`DeferredWork`).

        Use it for files nothing later in the run reads; a failure still fails the run.

        Args:
            function: A function that writes into ``artifacts``.
            *args: Its arguments.
        """
        if self.deferred is None:
            function(*args)
        else:
            self.deferred.add(function, *args)

    @property
    def files_in_background(self) -> bool:
        """Whether :meth:`defer_file` files are made by a background thread after the run (the edge loop).

        A step can then make them from scratch there (score the image again for its map) rather than hold what
        they need; a one-shot run makes them before promotion, from what the step held.

        Returns:
            True in a resident process's run whose files go to its background thread.
        """
        return self.deferred is not None and self.deferred.background

    def defer_file(self, path: Path, produce: Callable[..., bytes], *args: Any, first: bool = False) -> None:
        """Write a file the run's answer and verdict do not need, which a resident process may shed (a picture).

        A one-shot run writes it, as :meth:`defer` does, before promotion. The edge loop writes it from a
        low-priority background thread into the promoted run's folder, and drops it when the line is faster than
        that thread (:mod:`alo.background`).

        Args:
            path: Where the file goes, inside ``artifacts``.
            produce: Makes the file's bytes.
            *args: Its arguments.
            first: Keep it before the others when the background thread must drop some (an NG image's picture).
        """
        file = DeferredFile(path, produce, args, first)
        if self.deferred is None:
            file.write()
        else:
            self.deferred.add_file(file)

    def artifact_path(self, *parts: str) -> Path:
        """Return a path inside the staged artifacts, creating its parent folder.

        Args:
            *parts: Path components below the artifacts root, e.g. ``("output", "output.csv")``.

        Returns:
            The path.
        """
        path = self.artifacts.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


class Asset:
    """Base class of a step. Subclasses set ``Args`` and implement :meth:`run`."""

    Args: ClassVar[type[StepArgs]] = StepArgs

    @classmethod
    def arguments(cls, pipeline: str) -> type[StepArgs]:
        """The argument class of this step in a pipeline (``Args`` unless a step takes other keys there).

        Args:
            pipeline: ``train`` or ``inference``.

        Returns:
            The class the plan's arguments are validated against.
        """
        del pipeline
        return cls.Args

    def run(self, ctx: StepContext, data: Data, config: Config) -> tuple[Data, Config]:
        """Do the step's work.

        Args:
            ctx: The run context.
            data: Objects flowing between steps (data frames, arrays, models).
            config: Settings flowing between steps (decisions earlier steps made).

        Returns:
            The updated ``data`` and ``config``.
        """
        raise NotImplementedError


def available_steps(package: str) -> list[str]:
    """List the step names a solution package provides.

    Args:
        package: The solution package's import name.

    Returns:
        Sorted module names that expose ``ASSET``.
    """
    module = importlib.import_module(package)
    names = []
    for info in pkgutil.iter_modules(module.__path__):
        if not info.ispkg and not info.name.startswith("_"):
            names.append(info.name)
    return sorted(names)


def load_asset(package: str, name: str, where: str) -> type[Asset]:
    """Import the step class for a plan step name.

    Args:
        package: The solution package's import name.
        name: The step name from the plan.
        where: The key path in the plan, for messages.

    Returns:
        The step class.

    Raises:
        PlanError: No such step in the package.
    """
    steps = available_steps(package)
    if name not in steps:
        msg = f"plan error: unknown step '{name}' at {where}{suggest(name, steps)}; available steps: {', '.join(steps)}"
        raise PlanError(msg)
    module = importlib.import_module(f"{package}.{name}")
    asset = getattr(module, "ASSET", None)
    if asset is None:
        msg = f"plan error: '{package}.{name}' is not a step (it has no ASSET); available steps: {', '.join(steps)}"
        raise PlanError(msg)
    return asset
