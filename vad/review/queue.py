"""The review queue: kept images without a verdict, those whose verdict would teach the model most first.

The order (:func:`informativeness`): first the disagreements (a known label, from labelled inference data, on the
other side of OK/NG than the prediction), then the images out of distribution (the model does not know such
images), then the rest by how close their ``anomaly_score`` lies to the inference threshold (the model is least
sure there); ties oldest first. The same key picks which images of a large run are kept at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vad.ood.verdict import REJECTED_LABEL
from vad.review.entries import ReviewEntry, ScoredImage

DISAGREEMENT, OUT_OF_DISTRIBUTION, NEAR_THRESHOLD = 0, 1, 2  # the queue's tiers, most informative first


@dataclass(frozen=True)
class QueueItem:
    """One image of the queue and why it is there.

    Attributes:
        entry: The kept image.
        tier: :data:`DISAGREEMENT`, :data:`OUT_OF_DISTRIBUTION` or :data:`NEAR_THRESHOLD`.
        reason: The reason in words, for the page.
    """

    entry: ReviewEntry
    tier: int
    reason: str


def disagrees(label: str | None, pred_label: str, ok_name: str) -> bool:
    """Whether a known label and a prediction fall on different sides of OK/NG (a withheld verdict does not).

    Args:
        label: The known label (None: unknown).
        pred_label: The prediction.
        ok_name: The model's OK class name.

    Returns:
        True for a disagreement.
    """
    if label is None or pred_label == REJECTED_LABEL:
        return False
    return (label == ok_name) != (pred_label == ok_name)


def tier_of(scored: ScoredImage | ReviewEntry, ok_name: str) -> int:
    """The queue tier of a scored image (see the module's docstring).

    Args:
        scored: The image's scores and label.
        ok_name: The model's OK class name.

    Returns:
        Its tier.
    """
    if disagrees(scored.label, scored.pred_label, ok_name):
        return DISAGREEMENT
    if scored.in_distribution is False:
        return OUT_OF_DISTRIBUTION
    return NEAR_THRESHOLD


def informativeness(scored: ScoredImage | ReviewEntry, ok_name: str, threshold: float) -> tuple[int, float]:
    """The sort key of a scored image: its tier, then its distance to the threshold (smaller: more informative).

    Args:
        scored: The image's scores and label.
        ok_name: The model's OK class name.
        threshold: The inference threshold on ``anomaly_score``.

    Returns:
        The key; sort ascending.
    """
    return tier_of(scored, ok_name), abs(float(scored.anomaly_score) - threshold)


def most_informative(scored: Sequence[ScoredImage], ok_name: str, threshold: float, limit: int) -> list[int]:
    """The positions of the ``limit`` most informative images of a run, most informative first.

    Args:
        scored: The run's scored images.
        ok_name: The model's OK class name.
        threshold: The inference threshold.
        limit: The most to pick.

    Returns:
        Positions into ``scored``.
    """
    order = sorted(range(len(scored)), key=lambda i: (*informativeness(scored[i], ok_name, threshold), i))
    return order[: max(limit, 0)]


def review_queue(entries: Sequence[ReviewEntry], reviewed: set[str], ok_name: str, threshold: float) -> list[QueueItem]:
    """The kept images without a verdict, most informative first.

    Args:
        entries: The kept images (oldest first, as the index lists them).
        reviewed: Ids that have a verdict (left out).
        ok_name: The model's OK class name.
        threshold: The inference threshold.

    Returns:
        The queue.
    """
    waiting = [(position, e) for position, e in enumerate(entries) if e.id not in reviewed]
    waiting.sort(key=lambda item: (*informativeness(item[1], ok_name, threshold), item[0]))
    return [QueueItem(entry, tier_of(entry, ok_name), _reason(entry, ok_name, threshold)) for _, entry in waiting]


def _reason(entry: ReviewEntry, ok_name: str, threshold: float) -> str:
    """Why an image is in the queue, in words."""
    tier = tier_of(entry, ok_name)
    if tier == DISAGREEMENT:
        return f"labelled {entry.label} but predicted {entry.pred_label}"
    if tier == OUT_OF_DISTRIBUTION:
        distance = "not measurable" if entry.ood_score is None else f"{entry.ood_score:.2f}"
        return f"out of distribution (ood_score {distance})"
    return f"{abs(entry.anomaly_score - threshold):.3f} from the threshold {threshold:g}"
