"""The VAD solution's ALO steps: one module per pipeline step, each a thin adapter over the library (``vad``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
