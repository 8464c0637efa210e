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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from alo.args import StepArgs, suggest
from alo.errors import PlanError
from alo.plan import Plan

Data = dict[str, Any]
Config = dict[str, Any]


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
