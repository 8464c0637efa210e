"""Output step: write the edge conductor's ``inference_summary.yaml`` (inference wrote ``output.csv`` as it scored).

It also keeps the run's most informative scored images for the page's Review queue (``review/`` beside the plan,
:mod:`vad.review`): at most :data:`~vad.review.store.KEEP_PER_RUN` of them, picked by the queue's own order,
copied after the answer (deferred) and within the plan's ``control.review_size_mb``. A run of the edge loop
(its plan changed by a request's solution metadata) keeps them as ``loop``, a batch run as ``inference``.
Keeping them never fails the run: a problem is one warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from alo import Asset, Config, Data, StepArgs, StepContext, build_summary, write_summary
from alo.runner import train_id_of
from vad import samples as cols
from vad.batch_summary import summarize
from vad.review.entries import Origin
from vad.review.queue import most_informative
from vad.review.rows import scored_images
from vad.review.store import KEEP_PER_RUN, ImageToKeep, ReviewStore


class OutputArgs(StepArgs):
    """The output step takes no arguments."""


class OutputStep(Asset):
    """Writes the inference results."""

    Args = OutputArgs

    def run(self, ctx: StepContext, data: Data, config: Config) -> tuple[Data, Config]:
        """Write ``score/inference_summary.yaml`` from the predictions inference wrote to ``output.csv``.

        Args:
            ctx: Run context.
            data: Needs ``predictions`` and ``is_anomalous``.
            config: Needs ``inference``.

        Returns:
            ``data`` and ``config`` with ``summary``.
        """
        predictions: pd.DataFrame = data["predictions"]
        info = config["inference"]
        result, score, probability = summarize(predictions, data["is_anomalous"], info["ok_class"], info["ng_name"])
        samples = data["samples"]
        file_path = samples["_file"].iloc[0] if len(samples) == 1 else str(data["data_dir"])
        note = (
            f"{info['model_name']}: {info['n_images']} image(s), {info['n_pred_ng']} {info['ng_name']} "
            f"at threshold {info['inference_threshold']}"
        )
        if info.get("n_ood") is not None:
            note += f", {info['n_ood']} out of distribution"
        summary = build_summary(
            result=result,
            score=score,
            probability=probability,
            note=note,
            file_path=str(file_path),
            version=ctx.plan.version,
        )
        write_summary(summary, ctx.artifact_path("score", "inference_summary.yaml"))
        ctx.logger.info(f"summary: result {summary['result']}, score {summary['score']}")
        config["summary"] = summary
        self._keep_for_review(ctx, data, info)
        return data, config

    @staticmethod
    def _keep_for_review(ctx: StepContext, data: Data, info: dict) -> None:
        """Queue the copy of the run's most informative images into ``review/`` (after the answer)."""
        size_mb = ctx.plan.control.review_size_mb
        if size_mb <= 0:
            return
        samples: pd.DataFrame = data["samples"]
        labels = list(samples[cols.LABEL]) if cols.LABEL in samples else None
        scored = scored_images(data["predictions"], list(samples[cols.FILE]), labels)
        picked = most_informative(scored, info["ok_class"], info["inference_threshold"], KEEP_PER_RUN)
        images = [ImageToKeep(scored[i], path=Path(scored[i].source)) for i in picked]
        origin: Origin = "loop" if ctx.plan.changed_by is not None else "inference"
        store = ReviewStore.of_project(ctx.plan.root, size_mb)
        ctx.defer(keep_for_review, store, images, origin, train_id_of(ctx.model_dir), ctx.logger)


def keep_for_review(
    store: ReviewStore, images: list[ImageToKeep], origin: Origin, train_id: str | None, logger: logging.Logger
) -> None:
    """Keep images in the review store and log what happened (a failure is a warning, never the run's).

    Args:
        store: The project's review store.
        images: The images, most informative first.
        origin: ``inference`` or ``loop``.
        train_id: The model's train run.
        logger: The step's logger.
    """
    try:
        report = store.keep(images, origin, train_id)
    except (OSError, ValueError) as exc:  # a full disk, a read-only folder, a damaged file: never the run's error
        logger.warning(f"scored images not kept for review in {store.folder} ({exc.__class__.__name__}: {exc})")
        return
    logger.info(
        f"{len(report.kept)} of {len(images)} scored image(s) kept for review in {store.folder}"
        f" ({report.duplicates} already there, {report.pruned} older one(s) pruned)"
    )
    if report.no_room:
        logger.warning(
            f"{report.no_room} image(s) not kept for review: the images with a verdict fill review_size_mb "
            f"({store.size_mb} MB); fold the verdicts in with --mode update or raise control.review_size_mb"
        )


ASSET = OutputStep
