"""The Review page's data: a batch of the review queue, the verdicts given on it, and how many wait for an update.

Images are addressed by their review id, never by a path from the request (:meth:`ReviewStore.image_file`). The
verdicts go to ``review/feedback.csv`` through :mod:`vad.review.feedback`; the user's data is never touched.
"Waiting" verdicts are those the served model has not learnt yet: ``--mode update`` records the ids it learnt in
the model's ``train/train_config.json`` (``training.update.review_ids``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from vad.feedback_rows import learnt_review_ids
from vad.review.entries import ReviewEntry
from vad.review.feedback import Verdict, read_feedback, reviewed_ids, write_verdicts
from vad.review.queue import QueueItem, review_queue
from vad.review.store import ReviewStore

BATCH = 12  # images shown at a time
MAX_BATCH = 64


class ReviewItem(BaseModel):
    """One image of the queue as the page shows it."""

    id: str
    source: str = Field(description="the scored file's path or upload name (text only)")
    origin: str
    time: str
    anomaly_score: float
    pred_label: str
    certainty: float | None
    ood_score: float | None
    in_distribution: bool | None
    label: str | None
    reason: str = Field(description="why it is in the queue")
    tier: int = Field(description="0 disagreement, 1 out of distribution, 2 near the threshold")


class ReviewBatch(BaseModel):
    """A batch of the review queue."""

    items: list[ReviewItem]
    queued: int = Field(description="images without a verdict")
    waiting: int = Field(description="verdicts the served model has not learnt yet (the next --mode update's)")
    ok_name: str
    ng_name: str
    threshold: float


class VerdictIn(BaseModel):
    """A verdict on one image."""

    id: str = Field(max_length=64)
    verdict: Literal["OK", "NG"]


class VerdictsIn(BaseModel):
    """The verdicts of a submitted batch."""

    verdicts: list[VerdictIn] = Field(min_length=1, max_length=MAX_BATCH)


class VerdictsOut(BaseModel):
    """What a submitted batch did."""

    written: int
    waiting: int


class UnknownImageError(LookupError):
    """A verdict names an image the store does not hold (pruned, or never kept)."""


def queue_batch(
    store: ReviewStore, models: Path, ok_name: str, ng_name: str, threshold: float, limit: int
) -> ReviewBatch:
    """The first ``limit`` images of the queue, with the queue's length and the verdicts waiting.

    Args:
        store: The project's review store.
        models: The served model's folder (what it has learnt).
        ok_name: The model's OK class name.
        ng_name: Its NG name.
        threshold: The inference threshold.
        limit: The most images to show.

    Returns:
        The batch.
    """
    entries = [entry for entry in store.entries() if (store.folder / entry.image).is_file()]
    queue = review_queue(entries, reviewed_ids(store.folder), ok_name, threshold)
    return ReviewBatch(
        items=[_item(item) for item in queue[: max(1, min(limit, MAX_BATCH))]],
        queued=len(queue),
        waiting=waiting(store, models),
        ok_name=ok_name,
        ng_name=ng_name,
        threshold=threshold,
    )


def _item(item: QueueItem) -> ReviewItem:
    entry = item.entry
    return ReviewItem(
        id=entry.id,
        source=entry.source,
        origin=entry.origin,
        time=entry.time,
        anomaly_score=entry.anomaly_score,
        pred_label=entry.pred_label,
        certainty=entry.certainty,
        ood_score=entry.ood_score,
        in_distribution=entry.in_distribution,
        label=entry.label,
        reason=item.reason,
        tier=item.tier,
    )


def submit(store: ReviewStore, models: Path, given: VerdictsIn, ok_name: str, ng_name: str) -> VerdictsOut:
    """Write a batch's verdicts to ``feedback.csv`` (all or none: every id must be a kept image).

    Args:
        store: The project's review store.
        models: The served model's folder.
        given: The verdicts.
        ok_name: The label of an OK verdict.
        ng_name: The label of an NG verdict.

    Returns:
        How many were written and how many now wait for an update.

    Raises:
        UnknownImageError: An id is not a kept image.
    """
    kept: dict[str, ReviewEntry] = {entry.id: entry for entry in store.entries()}
    unknown = [v.id for v in given.verdicts if v.id not in kept]
    if unknown:
        msg = f"no kept image {unknown[0][:64]!r} (pruned, or never kept): reload the queue"
        raise UnknownImageError(msg)
    verdicts = [Verdict(kept[v.id], v.verdict == "NG") for v in given.verdicts]
    written = write_verdicts(store.folder, verdicts, ok_name, ng_name)
    return VerdictsOut(written=written, waiting=waiting(store, models))


def waiting(store: ReviewStore, models: Path) -> int:
    """How many verdicts (the latest per image) the served model has not learnt.

    Args:
        store: The project's review store.
        models: The served model's folder.

    Returns:
        The count.
    """
    given = set(read_feedback(store.folder)["review_id"])
    return len(given - learnt_ids(models))


def learnt_ids(models: Path) -> set[str]:
    """The review ids a model learnt by ``--mode update`` (empty for a model trained from its data alone).

    Args:
        models: A ``models`` folder.

    Returns:
        The ids.
    """
    try:
        found = json.loads((models / "train" / "train_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    training = found.get("training") if isinstance(found, dict) else None
    return learnt_review_ids(training) if isinstance(training, dict) else set()
