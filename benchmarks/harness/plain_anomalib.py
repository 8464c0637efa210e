"""Plain anomalib, the baseline side of the speed benchmarks, set up alike in each of them.

Quiet (its warnings and INFO lines off), on the CPU, one device, no logger or progress bar; the models with
their pre-processor at the benchmark's size and no post-processing, evaluator or visualiser (raw scores); the
``Folder`` datamodule with ``num_workers=0`` (ours loads in its own process too; 2 cores).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, TypedDict


class RawOutput(TypedDict):
    """The options that leave a model's scores raw: no post-processor, evaluator or visualiser."""

    post_processor: bool
    evaluator: bool
    visualizer: bool


RAW: RawOutput = {"post_processor": False, "evaluator": False, "visualizer": False}


def quiet() -> None:
    """Quiet: anomalib's (and Lightning's) warnings and log lines off in this worker process."""
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def cpu_engine(root: Path, **options: Any) -> Any:
    """An anomalib ``Engine`` on one CPU device, no logger or progress bar.

    Args:
        root: Its ``default_root_dir``.
        **options: More ``Engine`` options (``max_epochs``, ``limit_val_batches``, ``callbacks``).

    Returns:
        The engine.
    """
    from anomalib.engine import Engine

    return Engine(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, default_root_dir=root, **options
    )


def folder_datamodule(root: Path, batch: int, **options: Any) -> Any:
    """An anomalib ``Folder`` datamodule over hard-linked image folders, no loader workers, seed 0.

    Args:
        root: The folder of the image folders.
        batch: Train and eval batch size.
        **options: The folders and split modes (``normal_dir``, ``abnormal_dir``, ``val_split_mode``, ...).

    Returns:
        The datamodule.
    """
    from anomalib.data import Folder

    return Folder(
        name="gravel", root=root, train_batch_size=batch, eval_batch_size=batch, num_workers=0, seed=0, **options
    )


def patchcore_module(backbone: str, layers: list[str], ratio: float, size: tuple[int, int]) -> Any:
    """An anomalib ``Patchcore`` with the same ImageNet weights as ours (from the same offline package).

    Args:
        backbone: The timm backbone.
        layers: Its feature layers.
        ratio: The coreset sampling ratio.
        size: The input size (height, width).

    Returns:
        The Lightning module, raw scores.
    """
    from anomalib.models import Patchcore

    from vad.backbones import load_pretrained_weights

    module = Patchcore(
        backbone=backbone,
        layers=layers,
        pre_trained=False,
        coreset_sampling_ratio=ratio,
        pre_processor=Patchcore.configure_pre_processor(image_size=size),
        **RAW,
    )
    load_pretrained_weights(module.model.feature_extractor.feature_extractor, backbone, None)
    return module


def fastflow_module(backbone: str, size: tuple[int, int], **options: Any) -> Any:
    """An anomalib ``Fastflow`` with random backbone weights (speed only).

    Args:
        backbone: One of the backbones anomalib's FastFlow accepts.
        size: The input size (height, width).
        **options: More ``Fastflow`` options (``flow_steps``).

    Returns:
        The Lightning module, raw scores.
    """
    from anomalib.models import Fastflow

    return Fastflow(
        backbone=backbone,
        pre_trained=False,
        pre_processor=Fastflow.configure_pre_processor(image_size=size),
        **options,
        **RAW,
    )
