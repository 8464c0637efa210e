"""How the trained threshold is chosen: the methods (``F1``, ``Percentile``) and the switch between them.

Each method is one class here (a name, whether it needs NG validation images, how it picks a threshold from the
validation scores, and which epoch metric it leaves a model to select on). :class:`ThresholdPolicy` holds the
plan's choice and the switch: a method that needs NG images falls back to the label-free one when validation holds
too few of them. The readiness step asks the policy which method to use, :class:`vad.calibration.Calibration`
asks the method for the threshold, and the train step asks it for the epoch metric. Adding a method is one class
and one entry in :data:`METHODS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import pandas as pd

from vad.thresholds import f1_threshold, percentile_threshold


class ThresholdMethod(ABC):
    """One way of choosing the raw score from which an image is NG."""

    name: ClassVar[str]
    needs_ng: ClassVar[bool]  # whether it needs NG validation images (else it falls back)
    forced_monitor: ClassVar[str | None] = None  # the epoch metric it imposes on models, if any

    @abstractmethod
    def threshold(self, raw: np.ndarray, is_ng: np.ndarray, table: pd.DataFrame, percentile: float) -> float:
        """The threshold from the validation scores.

        Args:
            raw: Raw validation image scores.
            is_ng: True where the validation image is NG.
            table: The threshold sweep of those scores (:func:`vad.thresholds.sweep`).
            percentile: The plan's ``percentile`` (share of OK scores below the threshold).

        Returns:
            The raw threshold.
        """

    def monitor(self, requested: str) -> str:
        """The epoch metric a model selects its epoch on under this method.

        Args:
            requested: The plan's ``monitor_metric``.

        Returns:
            The metric to use: :attr:`forced_monitor` when the method has one, else ``requested``.
        """
        return self.forced_monitor or requested


class F1Method(ThresholdMethod):
    """The threshold with the best F1 over the validation sweep (ties: best accuracy, then the middle)."""

    name = "F1"
    needs_ng = True

    def threshold(self, raw: np.ndarray, is_ng: np.ndarray, table: pd.DataFrame, percentile: float) -> float:
        """See :meth:`ThresholdMethod.threshold`."""
        del raw, is_ng, percentile
        return f1_threshold(table)


class PercentileMethod(ThresholdMethod):
    """A percentile of the OK validation scores: needs no NG image."""

    name = "Percentile"
    needs_ng = False
    forced_monitor = "loss"  # without NG images no image metric can be measured

    def threshold(self, raw: np.ndarray, is_ng: np.ndarray, table: pd.DataFrame, percentile: float) -> float:
        """See :meth:`ThresholdMethod.threshold`."""
        del table
        return percentile_threshold(raw[~is_ng], percentile)


METHODS: dict[str, ThresholdMethod] = {method.name: method for method in (F1Method(), PercentileMethod())}
FALLBACK = "Percentile"  # the label-free method a method that needs NG images falls back to
if TYPE_CHECKING:  # a name checked at run time: the checker sees a string
    MethodName = str
else:
    MethodName = Literal[tuple(METHODS)]  # the plan's values, from the methods


def method(name: str) -> ThresholdMethod:
    """A threshold method by name.

    Args:
        name: ``F1`` or ``Percentile`` (see :data:`METHODS`).

    Returns:
        The method.

    Raises:
        ValueError: No method has that name.
    """
    if name not in METHODS:
        msg = f"threshold method {name!r} is not one of {', '.join(METHODS)}"
        raise ValueError(msg)
    return METHODS[name]


@dataclass(frozen=True)
class ThresholdPolicy:
    """The plan's threshold method and when it falls back.

    Attributes:
        requested: The plan's ``threshold_method``.
        num_minor_threshold: At most this many NG validation images: a method that needs them falls back.
        ratio_minor_threshold: At most this NG/OK validation ratio: the same.
    """

    requested: str = "F1"
    num_minor_threshold: int = 5
    ratio_minor_threshold: float = 0.1

    def choose(self, ok_valid: int, ng_valid: int) -> tuple[str, str]:
        """The method to use for a validation split, and why it differs from the requested one.

        Args:
            ok_valid: OK validation images.
            ng_valid: NG validation images.

        Returns:
            The method's name, and the reason of a fallback ('' when the requested method is used).
        """
        if not method(self.requested).needs_ng:
            return self.requested, ""
        reason = ""
        if ng_valid <= self.num_minor_threshold:
            reason = f"only {ng_valid} NG validation image(s) (num_minor_threshold {self.num_minor_threshold})"
        elif ok_valid and ng_valid / ok_valid <= self.ratio_minor_threshold:
            reason = (
                f"NG/OK validation ratio {ng_valid}/{ok_valid} = {ng_valid / ok_valid:.3f} "
                f"<= ratio_minor_threshold {self.ratio_minor_threshold}"
            )
        return (FALLBACK, reason) if reason else (self.requested, "")
