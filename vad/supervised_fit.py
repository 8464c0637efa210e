"""The train step's supervised mode: descriptors of the labelled images, the cross-fitted head, or the fallback.

The head's arithmetic and its honesty live in :mod:`vad.supervision`; this module feeds it the
model's descriptors and says, in one log line, what it did or why it fell back to unsupervised scoring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alo.logs import Progress
from vad.batches import loader
from vad.models.base import FitData, VadModel
from vad.supervision import FOLDS, MIN_NG, cross_fit


@dataclass(frozen=True)
class SupervisedResult:
    """What the mode did.

    Attributes:
        scores: Raw validation scores to calibrate on: out-of-fold when a head was fitted, else the model's.
        record: What ``train_config.json`` keeps of it.
    """

    scores: np.ndarray
    record: dict[str, Any]


def descriptors(model: VadModel, files: list[str], batch_size: int, logger: logging.Logger, what: str) -> np.ndarray:
    """The model's descriptors of some image files, in file order.

    Args:
        model: A fitted model that supports a head.
        files: Image files.
        batch_size: Images per batch.
        logger: Progress logger.
        what: Name of the images in the progress lines.

    Returns:
        (N, F) float64 descriptors.
    """
    progress = Progress(logger, f"{what} descriptors", len(files))
    found: list[np.ndarray] = []
    model.eval()
    for images, _ in loader(files, model.spec, batch_size):
        with torch.inference_mode():
            found.append(model.image_descriptors(images.to(model.device)).double().cpu().numpy())
        progress.update(len(images))
    return np.concatenate(found)


def fit_supervised(
    model: VadModel,
    train: FitData,
    valid: FitData,
    raw: np.ndarray,
    batch_size: int,
    seed: int,
    logger: logging.Logger,
) -> SupervisedResult:
    """Fit the head on the labelled images with cross-fitting, or fall back to unsupervised scoring.

    Args:
        model: The fitted model (its head is set here when one is fitted).
        train: OK training images.
        valid: Validation images and labels.
        raw: The model's raw validation scores (without a head).
        batch_size: Images per batch.
        seed: Seed of the folds.
        logger: Where the one line about the mode goes.

    Returns:
        The validation scores to calibrate on and the record.
    """
    is_ng = valid.is_ng
    n_ng, n_ok = int(is_ng.sum()), int((~is_ng).sum())
    if not model.supports_head():
        logger.warning(
            f"supervised: {model.spec.model_name} with these settings has no supervised head (PatchCore with "
            f"image_score map_max has one); training unsupervised"
        )
        return SupervisedResult(raw, {"used": False, "reason": "model has no head"})
    if n_ng < MIN_NG or n_ok < FOLDS:
        logger.warning(
            f"supervised: the validation split has {n_ng} NG and {n_ok} OK image(s); the mode needs at least {MIN_NG} "
            f"NG and {FOLDS} OK, so this model trains unsupervised (add labelled NG images to the train CSV)"
        )
        return SupervisedResult(raw, {"used": False, "reason": f"{n_ng} NG validation images, needs {MIN_NG}"})
    kept = model.training_descriptors()  # PatchCore keeps them while building its bank (augmented passes too)
    fit = cross_fit(
        kept if kept is not None else descriptors(model, train.files, batch_size, logger, "training"),
        descriptors(model, valid.files, batch_size, logger, "validation"),
        is_ng,
        raw,
        seed,
    )
    model.set_head(fit.head)
    logger.info(
        f"supervised: head fitted on {len(train.files)} OK training + {n_ok} OK and {n_ng} NG validation images; "
        f"validation scored out of fold ({FOLDS} folds), so the threshold is set on images each head never saw"
    )
    return SupervisedResult(fit.scores, {"used": True, "folds": FOLDS, "ng_images": n_ng})
