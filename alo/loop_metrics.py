"""The edge loop's figures over time: requests, failures, NG rate, anomaly scores, out-of-distribution images, latency.

The loop adds each answered request (:meth:`SessionMetrics.add`, with the rows of its ``output/output.csv``) and,
every ``every`` requests or :data:`SECONDS` seconds, takes the figures since the last time
(:meth:`SessionMetrics.take`) for its session's one MLflow run, at the step of the requests served so far.

Figures at each step: ``requests`` (in all), ``failures`` (in all), ``interval_requests``, ``ng_rate`` (NG images
over the interval's images), ``images``, ``ng_images`` and ``ood_images`` (in all), ``score_p50``, ``score_p95``,
``score_max`` (``anomaly_score`` of the interval's images), ``latency_p50_ms``, ``latency_p95_ms`` (request to
summary answer, over the interval's requests). Later statistics, the drift statistic first, add their figures at
the same steps through :attr:`SessionMetrics.sources`: each is called at each step and its figures are logged
beside these.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

SECONDS = 60.0  # figures are logged at least this often while requests come
SCORE = "anomaly_score"
PREDICTED = "pred_label"
IN_DISTRIBUTION = "in_distribution"
OOD_SCORE = "ood_score"


@dataclass
class RequestRows:
    """One request's scored images, as its ``output.csv`` holds them.

    Attributes:
        scores: Each image's ``anomaly_score``.
        ng: How many images are predicted NG.
        ood: How many images are out of distribution (``in_distribution`` False; 0 without the column).
        ood_scores: Each image's ``ood_score`` (None where the table has none).
    """

    scores: list[float] = field(default_factory=list)
    ng: int = 0
    ood: int = 0
    ood_scores: list[float | None] = field(default_factory=list)

    def measures(self) -> dict[str, list[float | None]]:
        """The images' values by column, as a score watch (:mod:`alo.score_watch`) takes them.

        Returns:
            ``anomaly_score`` and ``ood_score`` of each image.
        """
        return {SCORE: list(self.scores), OOD_SCORE: list(self.ood_scores)}


def read_rows(table: Path, summary: Mapping[str, object], ng_name: str | None) -> tuple[RequestRows, str | None]:
    """A request's rows from its ``output.csv``, NG told by the NG name.

    The NG name is the summary's ``probability`` key that is not the OK name; the OK probability is ``1 - p`` and
    the NG one ``p``, the mean ``anomaly_score``, so the key nearest that mean is NG (kept once known: a mean of
    0.5 does not tell them apart).

    Args:
        table: The request's ``output/output.csv``.
        summary: Its ``inference_summary``.
        ng_name: The NG name found by an earlier request, or None.

    Returns:
        The rows, and the NG name (None while unknown).
    """
    rows = RequestRows()
    labels: list[str] = []
    with table.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                rows.scores.append(float(row[SCORE]))
            except (KeyError, TypeError, ValueError):
                continue
            labels.append(str(row.get(PREDICTED)))
            rows.ood += row.get(IN_DISTRIBUTION) == "False"
            rows.ood_scores.append(_number(row.get(OOD_SCORE)))
    probability = summary.get("probability")
    if ng_name is None and isinstance(probability, Mapping) and len(probability) == 2 and rows.scores:
        mean = sum(rows.scores) / len(rows.scores)
        gaps = sorted((abs(float(value) - mean), str(key)) for key, value in probability.items())
        if gaps[0][0] != gaps[1][0]:
            ng_name = gaps[0][1]
    rows.ng = sum(label == ng_name for label in labels) if ng_name is not None else 0
    return rows, ng_name


def _number(text: str | None) -> float | None:
    """A table cell as a number (None when empty or not a number)."""
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of values (nearest rank, as a line's dashboard reads it)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class SessionMetrics:
    """The loop's figures since the last step (see the module)."""

    def __init__(self, every: int, seconds: float = SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        """Start with nothing counted.

        Args:
            every: Requests between steps.
            seconds: Most seconds between steps while requests come.
            clock: Seconds (tests give their own).
        """
        self.every = every
        self.seconds = seconds
        self.clock = clock
        self.sources: list[Callable[[], Mapping[str, float]]] = []
        self.requests = self.failures = self.images = self.ng_images = self.ood_images = 0
        self._latencies: list[float] = []
        self._scores: list[float] = []
        self._interval_images = self._interval_ng = 0
        self._since = clock()

    def add(self, latency_s: float, rows: RequestRows | None, failed: bool = False) -> None:
        """Count one answered request.

        Args:
            latency_s: Seconds from taking the request to its summary answer.
            rows: Its scored images (None: no verdict, or its table could not be read).
            failed: The request failed (before or after its verdict was answered).
        """
        self.requests += 1
        self.failures += failed
        self._latencies.append(latency_s)
        if rows is None:
            return
        self.images += len(rows.scores)
        self.ng_images += rows.ng
        self.ood_images += rows.ood
        self._interval_images += len(rows.scores)
        self._interval_ng += rows.ng
        self._scores.extend(rows.scores)

    @property
    def pending(self) -> int:
        """Requests counted since the last step."""
        return len(self._latencies)

    def due(self) -> bool:
        """Whether a step is due: ``every`` requests, or ``seconds`` with at least one request, since the last.

        Returns:
            True when :meth:`take` should be called.
        """
        waiting = len(self._latencies)
        return waiting >= self.every or (waiting > 0 and self.clock() - self._since >= self.seconds)

    def take(self) -> tuple[int, dict[str, float]]:
        """The figures since the last step, at the step of the requests served so far; the interval starts again.

        Returns:
            The step and the figures.
        """
        figures: dict[str, float] = {
            "requests": self.requests,
            "failures": self.failures,
            "interval_requests": len(self._latencies),
            "images": self.images,
            "ng_images": self.ng_images,
            "ood_images": self.ood_images,
        }
        if self._interval_images:
            figures["ng_rate"] = self._interval_ng / self._interval_images
        if self._scores:
            figures.update(
                score_p50=_quantile(self._scores, 0.5),
                score_p95=_quantile(self._scores, 0.95),
                score_max=max(self._scores),
            )
        if self._latencies:
            figures["latency_p50_ms"] = _quantile(self._latencies, 0.5) * 1000
            figures["latency_p95_ms"] = _quantile(self._latencies, 0.95) * 1000
        for source in self.sources:
            figures.update(source())
        self._latencies, self._scores = [], []
        self._interval_images = self._interval_ng = 0
        self._since = self.clock()
        return self.requests, figures
