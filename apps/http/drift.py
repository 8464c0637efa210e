"""Drift of what the HTTP API scores: fed by ``/v1/predict``, exported on ``/metrics``, read by the page.

Each answered request's images go to the service's :class:`~vad.drift.DriftWatch` after the answer (a background
task, off its path); a crossing is logged as a WARNING with the watch's message. :class:`DriftCollector` exports
the watch's state at each scrape of ``/metrics`` as Prometheus gauges.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vad.detector import Prediction
from vad.drift import DriftWatch

logger = logging.getLogger("apps.http.drift")


@dataclass(frozen=True)
class ServedDrift:
    """The service's drift watch and the models folder it serves.

    Attributes:
        watch: The watch.
        models: The ``models`` folder the service scores with (a training into it starts a new reference).
    """

    watch: DriftWatch
    models: Path

    def observe(self, found: Sequence[Prediction]) -> None:
        """Hand a request's predictions to the watch; log each crossing.

        Args:
            found: The request's predictions.
        """
        values: dict[str, list[float | None]] = {
            "anomaly_score": [prediction.anomaly_score for prediction in found],
            "ood_score": [prediction.ood_score for prediction in found],
        }
        for alert in self.watch.observe(self.models, values):
            logger.warning(f"drift {alert.text}")


class DriftCollector(Collector):
    """The watch's state as gauges, read at each scrape."""

    def __init__(self, watch: DriftWatch) -> None:
        """Export a watch.

        Args:
            watch: The service's drift watch.
        """
        self.watch = watch

    def collect(self) -> Iterator[Metric]:
        """The gauges: availability, limit, and per measure the statistic, the window's images and crossed.

        Yields:
            One metric family each.
        """
        state = self.watch.snapshot()
        yield GaugeMetricFamily(
            "vad_drift_available", "1 when the served model has a drift reference", value=int(state["available"])
        )
        limit = state["limit"]
        yield GaugeMetricFamily("vad_drift_limit", "KS statistic from which a measure has drifted", value=limit)
        statistic = GaugeMetricFamily(
            "vad_drift_statistic", "KS statistic of the recent images against validation OK", labels=["measure"]
        )
        images = GaugeMetricFamily("vad_drift_window_images", "Images in the drift window", labels=["measure"])
        crossed = GaugeMetricFamily("vad_drift_crossed", "1 while the measure is past the limit", labels=["measure"])
        for name, reading in state["measures"].items():
            if reading["statistic"] is not None:
                statistic.add_metric([name], reading["statistic"])
            images.add_metric([name], reading["images"])
            crossed.add_metric([name], int(reading["crossed"]))
        yield from (statistic, images, crossed)
