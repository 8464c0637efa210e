"""Which epoch a model trained by gradient descent keeps, and when it stops (FastFlow, SuperSimpleNet).

Validation sets are small (30 images move AUROC in steps of about 0.005), so an epoch counts as good as the
best when its monitored metric is within :data:`TOLERANCE` of the best so far; the latest such epoch is kept
(the most trained model validation cannot tell apart from the best), and training stops after ``patience``
epochs in a row that are not.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

EpochCallback = Callable[[int, dict[str, float]], None]  # (epoch, validation metrics); may raise to stop training
# The callback of the fit running in this context (the tuner's pruning reporter), handed to the train step through
# the runner, which passes no objects of its own: set by :func:`reporting`, read once into the fit options.
_REPORTER: ContextVar[EpochCallback | None] = ContextVar("vad_epoch_reporter", default=None)


@contextmanager
def reporting(callback: EpochCallback) -> Iterator[None]:
    """Have the fits started in this context (and thread) report each epoch to ``callback``.

    Args:
        callback: Called after each epoch with (epoch, validation metrics); it may raise to stop the fit (the
            tuner's pruning).

    Yields:
        Nothing; the callback is unset again when the block ends.
    """
    token = _REPORTER.set(callback)
    try:
        yield
    finally:
        _REPORTER.reset(token)


def reporter() -> EpochCallback | None:
    """The callback set by :func:`reporting` in this context, if any (the train step puts it in the fit options).

    Returns:
        The callback or None.
    """
    return _REPORTER.get()


HIGHER_IS_BETTER = {"image_AUROC": True, "image_F1Score": True, "loss": False}
# How far below the best an image metric may fall and still count as "as good". Validation sets are small
# (30 images move AUROC in steps of ~0.005), so smaller changes are noise; the flows keep improving on held-out
# data long after a small validation set stops showing it (BENCHMARKS.md), so plateaus must not stop training.
TOLERANCE = {"image_AUROC": 0.02, "image_F1Score": 0.02, "loss": 0.0}


class EpochKeeper:
    """Follows the validation metrics epoch by epoch, keeps the state of the epoch to return to, says when to stop.

    Args:
        monitor: The metric that decides (``image_AUROC``, ``image_F1Score``, ``loss``).
        patience: Epochs in a row below the best before stopping.
        logger: Progress logger.
        on_epoch: Called with each epoch's metrics before anything else (the fit options' ``on_epoch``).
    """

    def __init__(
        self, monitor: str, patience: int, logger: logging.Logger, on_epoch: EpochCallback | None = None
    ) -> None:
        self.on_epoch = on_epoch
        self.monitor = monitor
        self.patience = patience
        self.logger = logger
        self.sign = 1.0 if HIGHER_IS_BETTER[monitor] else -1.0
        self.best = float("-inf")
        self.kept: dict[str, float] | None = None
        self.kept_state: dict[str, torch.Tensor] | None = None
        self.stale = 0

    def update(self, epoch: int, metrics: dict[str, float], model: torch.nn.Module) -> bool:
        """Record one epoch's validation metrics (``on_epoch`` sees them first; it may raise to prune).

        Args:
            epoch: The epoch's number, from 1.
            metrics: Its validation metrics (NaN where one cannot be computed).
            model: The model, whose state is copied when this epoch is the one to keep.

        Returns:
            True when training should stop (``patience`` epochs in a row below the best).
        """
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics)
        value = self.sign * metrics[self.monitor]
        measured = not math.isnan(value)  # NaN: the metric cannot be computed (e.g. no NG image in validation)
        if measured:
            self.best = max(self.best, value)
        as_good = measured and value >= self.best - TOLERANCE[self.monitor]
        if as_good or self.kept is None:
            self.kept = {**metrics, "epoch": float(epoch)}
            self.kept_state = copy.deepcopy(model.state_dict())
        self.stale = 0 if as_good else self.stale + 1
        if self.stale >= self.patience:
            self.logger.info(f"early stopping: {self.monitor} stayed below its best for {self.patience} epochs")
            return True
        return False

    def is_kept(self, epoch: int) -> bool:
        """Whether an epoch is (so far) the one to keep.

        Args:
            epoch: The epoch's number.

        Returns:
            True when it is.
        """
        return self.kept is not None and int(self.kept["epoch"]) == epoch

    def restore(self, model: torch.nn.Module) -> dict[str, float]:
        """Load the kept epoch's state into the model.

        Args:
            model: The model.

        Returns:
            The kept epoch's metrics and its number (``epoch``); empty when no epoch ran.
        """
        if self.kept is None or self.kept_state is None:
            return {}
        model.load_state_dict(self.kept_state)
        self.logger.info(f"kept epoch {int(self.kept['epoch'])}: valid {self.monitor} {self.kept[self.monitor]:.4g}")
        return self.kept


def train_epochs(
    model: torch.nn.Module,
    train_epoch: Callable[[], tuple[float, int]],
    evaluate: Callable[[], dict[str, float]],
    max_epochs: int,
    monitor: str,
    patience: int,
    logger: logging.Logger,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Run epochs, validate after each, keep the latest epoch as good as the best (:class:`EpochKeeper`).

    Args:
        model: The model (its state is kept and restored).
        train_epoch: Trains one epoch in training mode; returns (summed loss, samples).
        evaluate: Validation metrics of the current model (``monitor`` among them).
        max_epochs: Upper bound on epochs.
        monitor: Metric deciding the kept epoch and early stopping.
        patience: Epochs below the best before stopping.
        logger: Progress logger.
        on_epoch: Called with each epoch's validation metrics (the fit options' ``on_epoch``).

    Returns:
        The kept epoch's validation metrics, ``epoch``, ``epoch_seconds`` (mean wall time of the epochs run) and
        ``history`` (per epoch: train loss and validation metrics); empty when no epoch ran.
    """
    keeper = EpochKeeper(monitor, patience, logger, on_epoch)
    epoch_seconds: list[float] = []
    history: list[dict[str, float]] = []  # experiment tracking's steps
    for epoch in range(1, max_epochs + 1):
        started = time.perf_counter()
        total, count = train_epoch()
        model.eval()
        measured = evaluate()
        epoch_seconds.append(time.perf_counter() - started)
        train_loss = total / max(count, 1)
        history.append({"epoch": float(epoch), "train_loss": train_loss, **measured})
        stop = keeper.update(epoch, measured, model)
        logger.info(
            f"epoch {epoch}/{max_epochs}: train loss {train_loss:.4g}, "
            + ", ".join(f"valid {k} {v:.4g}" for k, v in measured.items())
            + f" ({epoch_seconds[-1]:.1f} s)"
            + (" (kept)" if keeper.is_kept(epoch) else "")
        )
        if stop:
            break
    model.eval()
    kept = keeper.restore(model)
    if not kept:  # max_epochs < 1: nothing trained
        return {}
    return {**kept, "epoch_seconds": sum(epoch_seconds) / len(epoch_seconds), "history": history}
