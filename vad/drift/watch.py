"""Drift of a served model: its reference found in the model folder, its monitor, alerts and the chart's points.

One :class:`DriftWatch` serves a resident process (the edge loop, the HTTP service). Each batch of scored images is
handed to :meth:`DriftWatch.observe` with the models folder it was scored by; a new model (another folder, or a
reference file written again by a training) starts a new monitor, an old model without a reference makes drift
unavailable (said once in the log, never an error). A measure that crosses the limit gives one :class:`DriftAlert`,
the message the caller publishes and logs; its recovery is logged. Thread-safe: the HTTP service observes in a
worker thread while the page and ``/metrics`` read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alo.runner import train_id_of
from vad.drift.monitor import DriftMonitor, DriftSettings, Reading
from vad.drift.reference import REFERENCE_FILE, DriftReference

logger = logging.getLogger("vad.drift")
HISTORY_POINTS = 500  # judgements kept for the page's chart (the oldest dropped first)


def _utc(seconds: float) -> str:
    """A time as ISO 8601 UTC to the second."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class DriftAlert:
    """A measure that crossed the limit: the message to publish (``alo_drift``) and log.

    Attributes:
        payload: ``time``, ``measure``, ``statistic``, ``p_value``, ``limit``, ``window`` (images judged),
            ``reference`` (validation OK images), ``train_id`` and ``message`` (one line for people).
    """

    payload: dict[str, Any]

    @property
    def text(self) -> str:
        """The payload as one line of JSON."""
        return json.dumps(self.payload)


class DriftWatch:
    """The drift of whichever model scores (see the module)."""

    def __init__(self, settings: DriftSettings, clock: Callable[[], float] = time.time) -> None:
        """Watch nothing yet: the first batch finds its model's reference.

        Args:
            settings: Window, limit and minimum window.
            clock: Seconds since the epoch (tests give their own).
        """
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._key: tuple[str, int, int] | None = None
        self._models: Path | None = None
        self._monitor: DriftMonitor | None = None
        self._unavailable: str | None = "no image scored yet"
        self._train_id: str | None = None
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)

    def observe(self, models: Path, values: Mapping[str, Sequence[float | None]]) -> list[DriftAlert]:
        """Add a batch scored by a model and judge it.

        Args:
            models: The ``models`` folder that scored the batch.
            values: Measure name -> the batch's values (``anomaly_score``, ``ood_score``).

        Returns:
            An alert for each measure that crossed the limit with this batch.
        """
        with self._lock:
            self._follow(models)
            if self._monitor is None:
                return []
            changes = self._monitor.observe(values)
            readings = self._monitor.readings
            judged = {name: r.statistic for name, r in readings.items() if r.statistic is not None}
            now = self.clock()
            if judged:
                self._history.append({"time": _utc(now), **judged})
        alerts = []
        for change in changes:
            if change.reading.crossed:
                alerts.append(self._alert(change.measure, change.reading, now))
            else:
                statistic = change.reading.statistic or 0.0
                logger.info(f"drift of {change.measure} over: KS statistic {statistic:.3f} back under the limit")
        return alerts

    def _follow(self, models: Path) -> None:
        """Start a new monitor when the model (its reference file) changed since the last batch."""
        path = models / "train" / REFERENCE_FILE
        try:
            stat = path.stat()
            key = (str(path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = (str(path), -1, -1)
        if key == self._key:
            return
        self._key, self._models, self._monitor, self._history = key, models, None, deque(maxlen=HISTORY_POINTS)
        self._train_id = train_id_of(models)
        try:
            reference = DriftReference.load(models / "train")
        except (OSError, ValueError) as exc:
            self._unavailable = f"the model's {REFERENCE_FILE} cannot be read ({exc}); train again to watch drift"
            logger.warning(f"drift not watched: {self._unavailable}")
            return
        if reference is None:
            self._unavailable = f"the model has no {REFERENCE_FILE} (trained before drift was watched); train again"
            logger.info(f"drift not watched: {self._unavailable}")
            return
        monitor = DriftMonitor(reference, self.settings)
        if not monitor.measures:
            self._unavailable = "the model's validation held too few OK images to compare with"
            logger.info(f"drift not watched: {self._unavailable}")
            return
        self._monitor, self._unavailable = monitor, None
        sizes = ", ".join(f"{name} ({len(values)})" for name, values in monitor.reference.items())
        logger.info(f"drift watched against the validation OK images: {sizes}")

    def _alert(self, measure: str, reading: Reading, now: float) -> DriftAlert:
        """The message of a crossing."""
        statistic, limit = reading.statistic or 0.0, self.settings.limit
        reference = len(self._monitor.reference[measure]) if self._monitor is not None else 0
        line = (
            f"{measure} has drifted: KS statistic {statistic:.3f} over the last {reading.images} images against "
            f"{reference} validation OK images (limit {limit:g})"
        )
        payload = {
            "time": _utc(now),
            "measure": measure,
            "statistic": round(statistic, 4),
            "p_value": reading.p_value,
            "limit": limit,
            "window": reading.images,
            "reference": reference,
            "train_id": self._train_id,
            "message": line,
        }
        return DriftAlert(payload)

    def figures(self) -> dict[str, float]:
        """The state as numbers (the loop's MLflow figures): each judged measure's statistic, the window, crossed.

        Returns:
            ``drift_<measure>`` per judged measure, ``drift_window`` (images in the fullest window) and
            ``drift_crossed`` (1 when a measure is past the limit); nothing while drift is unavailable.
        """
        with self._lock:
            if self._monitor is None:
                return {}
            readings = self._monitor.readings
        figures = {f"drift_{name}": r.statistic for name, r in readings.items() if r.statistic is not None}
        figures["drift_window"] = max((r.images for r in readings.values()), default=0)
        figures["drift_crossed"] = float(any(r.crossed for r in readings.values()))
        return figures

    def snapshot(self) -> dict[str, Any]:
        """The state for the page and ``/metrics``.

        Returns:
            ``available``, ``reason`` (why not), ``limit``, ``window`` (its size), ``min_window``, ``train_id``,
            ``crossed`` (any measure), ``measures`` (per measure: ``statistic``, ``p_value``, ``images``, ``crossed``,
            ``reference``) and ``history`` (``time`` and each judged measure's statistic, oldest first).
        """
        with self._lock:
            monitor, history = self._monitor, list(self._history)
            readings = monitor.readings if monitor is not None else {}
            measures = {
                name: {
                    "statistic": r.statistic,
                    "p_value": r.p_value,
                    "images": r.images,
                    "crossed": r.crossed,
                    "reference": len(monitor.reference[name]) if monitor is not None else 0,
                }
                for name, r in readings.items()
            }
            return {
                "available": monitor is not None,
                "reason": self._unavailable,
                "limit": self.settings.limit,
                "window": self.settings.window,
                "min_window": self.settings.min_window,
                "train_id": self._train_id,
                "crossed": any(r.crossed for r in readings.values()),
                "measures": measures,
                "history": history,
            }
