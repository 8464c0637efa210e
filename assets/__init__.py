"""The VAD solution: one module per pipeline step, and the library they share (``assets.vad``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def preload(models: Path, inference_args: dict[str, Any]) -> None:
    """Load a trained model into memory for a resident process (the framework's optional solution hook).

    Args:
        models: The ``models`` folder the inference pipeline will use.
        inference_args: The plan's ``inference`` step arguments (for ``accelerator`` and ``runtime``).
    """
    from assets.vad.detector import resident_detector

    accelerator = str(inference_args.get("accelerator", "cpu"))
    resident_detector(models, accelerator, runtime=str(inference_args.get("runtime", "auto")))
