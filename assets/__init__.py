"""The VAD solution's ALO steps: one module per pipeline step, each a thin adapter over the library (``vad``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alo.plan import Plan

if TYPE_CHECKING:
    from vad.drift import DriftWatch

CODE_PACKAGES = ("vad",)  # hashed into each run's code_id with this package


def preload(models: Path, inference_args: dict[str, Any]) -> None:
    """Load a trained model into memory for a resident process (the framework's optional solution hook).

    Args:
        models: The ``models`` folder the inference pipeline will use.
        inference_args: The plan's ``inference`` step arguments (for ``accelerator`` and ``runtime``).
    """
    from vad.detector import resident_detector

    accelerator = str(inference_args.get("accelerator", "cpu"))
    resident_detector(models, accelerator, runtime=str(inference_args.get("runtime", "auto")))


def score_watch(plan: Plan) -> DriftWatch | None:
    """The edge loop's drift watch (the framework's optional solution hook, :mod:`alo.score_watch`).

    Args:
        plan: The plan (``control.drift_window`` and ``control.drift_limit``).

    Returns:
        The watch, or None where SciPy is not installed (the slim edge install leaves it out; said in the log).
    """
    try:
        from vad.drift import DriftSettings, DriftWatch
    except ImportError as exc:
        logging.getLogger("vad.drift").warning(f"drift not watched: {exc} (install scipy to watch it)")
        return None
    return DriftWatch(DriftSettings.of(plan.control.drift_window, plan.control.drift_limit))
