"""What the HTTP API scored, kept for the page's Review queue after the answer (``review/``, :mod:`vad.review`).

A request's images (at most ``max_images``, far under :data:`~vad.review.store.KEEP_PER_RUN`) are all handed to
the store, as the bytes that were scored: an upload under its own id, its name recorded as text only. It runs
as a background task of the route (after the answer is sent, off its path); a failure is a log line, never the
client's error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from vad.detector import Prediction
from vad.review.entries import ScoredImage
from vad.review.store import ImageToKeep, ReviewStore

logger = logging.getLogger("apps.http.review")


def keep_scored(
    store: ReviewStore,
    names: Sequence[str],
    contents: Sequence[bytes],
    found: Sequence[Prediction],
    train_id: str | None,
) -> None:
    """Keep a request's scored images in the review store (within its cap; the same picture once).

    Args:
        store: The project's review store.
        names: The images' names (upload names or paths).
        contents: Their bytes, as scored.
        found: Their predictions.
        train_id: The served model's train run.
    """
    images = [
        ImageToKeep(
            ScoredImage(
                source=name,
                anomaly_score=prediction.anomaly_score,
                pred_label=prediction.label,
                raw_score=prediction.raw_score,
                certainty=prediction.certainty,
                ood_score=prediction.ood_score,
                in_distribution=prediction.in_distribution,
            ),
            data=data,
        )
        for name, data, prediction in zip(names, contents, found, strict=True)
    ]
    try:
        report = store.keep(images, "http", train_id)
    except (OSError, ValueError) as exc:  # a full disk, a read-only folder, a damaged file: never the run's error
        logger.warning(f"scored images not kept for review in {store.folder} ({exc.__class__.__name__}: {exc})")
        return
    if report.no_room:
        logger.warning(f"{report.no_room} image(s) not kept for review: the images with a verdict fill the cap")
