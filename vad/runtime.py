"""Run-time set-up shared by the steps and the detector: seeding, threads, device.

torch is imported by the functions that need it, not here: an inference process on an exported model
(:mod:`vad.export.runtime`) runs without torch.
"""

from __future__ import annotations

import os
import random
import sys
from typing import TYPE_CHECKING

import numpy as np

from alo.errors import PlanError

if TYPE_CHECKING:
    import torch


def seed_everything(seed: int) -> None:
    """Make a run repeatable: seed Python, NumPy and torch, use deterministic kernels.

    Args:
        seed: The experiment seed.
    """
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def cores() -> int:
    """The number of cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def use_all_cores() -> None:
    """Let torch use every core this process may run on (when torch is loaded: it is not imported for this)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(cores())


def resolve_device(accelerator: str) -> torch.device:
    """The device an ``accelerator`` setting means on this machine.

    Args:
        accelerator: ``cpu``, ``gpu`` (CUDA, required) or ``auto`` (CUDA when torch sees one, else the CPU).

    Returns:
        The torch device.

    Raises:
        PlanError: ``gpu`` on a machine where torch sees no CUDA device.
    """
    import torch

    if accelerator == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "gpu":
        msg = "plan error: accelerator 'gpu' but torch sees no CUDA GPU on this machine; use 'cpu' or 'auto'"
        raise PlanError(msg)
    return torch.device("cpu")
