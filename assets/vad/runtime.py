"""Run-time set-up shared by the steps and the detector: seeding, threads, device."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from alo.errors import PlanError


def seed_everything(seed: int) -> None:
    """Make a run repeatable: seed Python, NumPy and torch, use deterministic kernels.

    Args:
        seed: The experiment seed.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def use_all_cores() -> None:
    """Let torch use every core this process may run on."""
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def resolve_device(accelerator: str) -> torch.device:
    """The device an ``accelerator`` setting means on this machine.

    Args:
        accelerator: ``cpu``, ``gpu`` (CUDA, required) or ``auto`` (CUDA when torch sees one, else the CPU).

    Returns:
        The torch device.

    Raises:
        PlanError: ``gpu`` on a machine where torch sees no CUDA device.
    """
    if accelerator == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "gpu":
        msg = "plan error: accelerator 'gpu' but torch sees no CUDA GPU on this machine; use 'cpu' or 'auto'"
        raise PlanError(msg)
    return torch.device("cpu")
