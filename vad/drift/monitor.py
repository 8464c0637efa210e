"""A rolling window of recent images' measures, compared with the drift reference by the two-sample KS statistic.

Each measure (``anomaly_score``, ``ood_score``) keeps the values of its last ``window`` images. Once it holds
``min_window`` of them, every new batch is judged: the Kolmogorov-Smirnov statistic between the window and the
validation OK images (:func:`scipy.stats.ks_2samp`), the largest gap between their cumulative distributions (0: the
same, 1: no overlap). The limit is crossed when the statistic reaches ``limit`` and the gap is significant
(``p <= SIGNIFICANCE``: a small window or a reference of a few images does not cross on noise alone). It recovers
only below ``RECOVER_SHARE`` of the limit, so that a statistic hovering at the limit reports one crossing, not one
per image.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import ks_2samp

from vad.drift.reference import DriftReference

SIGNIFICANCE = 0.001  # most p-value of a crossing
RECOVER_SHARE = 0.8  # a crossed measure recovers below this share of the limit
MIN_REFERENCE = 10  # fewer reference values than this: the measure is not judged
MIN_WINDOW = 50  # fewest images judged (or the whole window when it is smaller)


@dataclass(frozen=True)
class DriftSettings:
    """How drift is judged (the plan's ``control.drift_window`` and ``control.drift_limit``).

    Attributes:
        window: Most recent images each measure keeps.
        limit: KS statistic from which a measure has drifted.
        min_window: Fewest images in the window before it is judged.
    """

    window: int = 200
    limit: float = 0.3
    min_window: int = MIN_WINDOW

    def __post_init__(self) -> None:
        """Check the values (a plan checks its keys first; this guards direct use)."""
        if not (1 <= self.min_window <= self.window and 0.0 < self.limit <= 1.0):
            msg = f"drift settings out of range: window {self.window}, min_window {self.min_window}, limit {self.limit}"
            raise ValueError(msg)

    @classmethod
    def of(cls, window: int, limit: float) -> DriftSettings:
        """The settings of a plan: judged from :data:`MIN_WINDOW` images, or the whole window when smaller.

        Args:
            window: ``control.drift_window``.
            limit: ``control.drift_limit``.

        Returns:
            The settings.
        """
        return cls(window, limit, min(MIN_WINDOW, window))


@dataclass(frozen=True)
class Reading:
    """One measure's last judgement.

    Attributes:
        statistic: The KS statistic (None until the window holds ``min_window`` images).
        p_value: Its p-value (None likewise).
        images: Images in the window.
        crossed: Whether the measure is past the limit (until it recovers).
    """

    statistic: float | None
    p_value: float | None
    images: int
    crossed: bool


@dataclass(frozen=True)
class Crossing:
    """A measure that crossed the limit (``crossed`` True) or recovered (False) at this batch.

    Attributes:
        measure: The measure's name.
        reading: Its reading then.
    """

    measure: str
    reading: Reading


class DriftMonitor:
    """The windows of one model's measures and their state (see the module)."""

    def __init__(self, reference: DriftReference, settings: DriftSettings) -> None:
        """Start with empty windows.

        Args:
            reference: The model's validation OK values; a measure with fewer than :data:`MIN_REFERENCE` is left out.
            settings: Window, limit and minimum window.
        """
        self.settings = settings
        self.reference = {name: v for name, v in reference.values.items() if len(v) >= MIN_REFERENCE}
        self._windows: dict[str, deque[float]] = {name: deque(maxlen=settings.window) for name in self.reference}
        self._readings = {name: Reading(None, None, 0, False) for name in self.reference}

    @property
    def measures(self) -> tuple[str, ...]:
        """The measures judged (those with a reference)."""
        return tuple(self.reference)

    @property
    def readings(self) -> dict[str, Reading]:
        """Each measure's last reading."""
        return dict(self._readings)

    def observe(self, values: Mapping[str, Sequence[float | None]]) -> list[Crossing]:
        """Add a batch of images' values and judge the measures that got some.

        Args:
            values: Measure name -> the batch's values (None or NaN, an image without it, is skipped; measures
                without a reference are ignored).

        Returns:
            The measures that crossed the limit or recovered with this batch.
        """
        changes: list[Crossing] = []
        for name, window in self._windows.items():
            added = [float(v) for v in values.get(name, ()) if v is not None and np.isfinite(v)]
            if not added:
                continue
            window.extend(added)
            change = self._judge(name, window)
            if change is not None:
                changes.append(change)
        return changes

    def _judge(self, name: str, window: deque[float]) -> Crossing | None:
        """The measure's new reading; the crossing or recovery it makes, if any."""
        before = self._readings[name]
        if len(window) < self.settings.min_window:
            self._readings[name] = Reading(None, None, len(window), before.crossed)
            return None
        result = ks_2samp(np.fromiter(window, np.float64, len(window)), self.reference[name])
        statistic, p_value = float(result.statistic), float(result.pvalue)
        crossed = before.crossed
        if not crossed and statistic >= self.settings.limit and p_value <= SIGNIFICANCE:
            crossed = True
        elif crossed and statistic < RECOVER_SHARE * self.settings.limit:
            crossed = False
        reading = self._readings[name] = Reading(statistic, p_value, len(window), crossed)
        return Crossing(name, reading) if crossed != before.crossed else None
