"""The edge loop's optional score watch: a solution hook that judges each request's scores over time (drift).

A solution package may define ``score_watch(plan)``, returning an object of the :class:`ScoreWatch` shape (or None
to watch nothing). The loop hands it each answered request's images (their ``anomaly_score`` and ``ood_score``,
as ``output.csv`` has them) with the models folder that scored them, logs its :meth:`ScoreWatch.figures` with the
session's figures (:attr:`alo.loop_metrics.SessionMetrics.sources`), and publishes each alert it returns on
``alo_drift``, the same text logged as a WARNING. The framework knows nothing of how the scores are judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol


class Alert(Protocol):
    """What a watch reports: one line of text (JSON for ALO's channels)."""

    @property
    def text(self) -> str:
        """The message, published and logged as it is."""
        ...


class ScoreWatch(Protocol):
    """Judges the scored images of each request."""

    def observe(self, models: Path, values: Mapping[str, Sequence[float | None]]) -> Sequence[Alert]:
        """Take one request's images.

        Args:
            models: The ``models`` folder that scored them.
            values: Column name -> each image's value (None where an image has none).

        Returns:
            The alerts this request raised (usually none).
        """
        ...

    def figures(self) -> Mapping[str, float]:
        """The watch's figures, logged with the session's at each step.

        Returns:
            Figure name -> value.
        """
        ...
