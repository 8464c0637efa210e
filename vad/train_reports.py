"""What the train step writes about validation: scores, reports, the threshold sweep and heatmaps."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from alo import StepContext
from vad import samples as cols
from vad.calibration import Calibration, Scored
from vad.detector import Detector
from vad.heatmaps import heatmap_name, save_heatmap
from vad.models.base import VadModel
from vad.models.factory import TrainedModel
from vad.models.spec import ModelSpec
from vad.pixel_metrics import PixelRows
from vad.reports import plot_sweep, write_validation_reports
from vad.scoring import score_files


def score_validation(
    model: VadModel, files: list[str], pixels: PixelRows, batch_size: int, logger: logging.Logger
) -> tuple[np.ndarray, dict[str, float]]:
    """Raw scores of the validation images, and pixel metrics where masks are given.

    Args:
        model: The fitted model.
        files: Validation images.
        pixels: Pixel metrics over the validation rows.
        batch_size: Images per batch.
        logger: Progress logger.

    Returns:
        Raw image scores (in file order) and the pixel metrics (empty without masks).
    """
    raw = np.empty(len(files), dtype=np.float64)
    for positions, scores, maps in score_files(model, files, batch_size, logger, "validation", pixels.wanted):
        raw[positions] = scores
        if maps is not None:
            pixels.update(positions, maps)
    return raw, pixels.compute()


def write_reports(
    ctx: StepContext,
    table: pd.DataFrame,
    calibration: Calibration,
    is_ng: np.ndarray,
    scored: Scored,
    pixel: dict[str, float],
    spec: ModelSpec,
) -> dict[str, float]:
    """The threshold sweep table and plot, and the validation reports when validation holds NG images.

    Args:
        ctx: Run context.
        table: The threshold sweep.
        calibration: The calibration chosen from it.
        is_ng: True where a validation image is NG.
        scored: The validation images scored with the calibration.
        pixel: Pixel metrics.
        spec: The model's description (for the plot title).

    Returns:
        The validation metrics (empty without NG images).
    """
    table.to_csv(ctx.artifact_path("extra_output", "train", "threshold_test_result.csv"), index=False)
    plot_sweep(
        table,
        calibration.threshold,
        ctx.artifact_path("extra_output", "train", "threshold_test_result.png"),
        f"{spec.model_name} / {spec.backbone}: validation metrics by threshold",
    )
    if not is_ng.any():
        ctx.logger.info("validation holds no NG image: no confusion matrix or classification report")
        return {}
    return write_validation_reports(
        ctx.artifacts / "output",
        is_ng,
        scored.is_anomalous,
        scored.columns["raw_score"],
        calibration.ok_name,
        calibration.ng_name,
        calibration.threshold,
        pixel,
    )


def save_heatmaps(ctx: StepContext, model: VadModel, calibration: Calibration, rows: pd.DataFrame) -> None:
    """Heatmap pictures of some validation rows, named ``{label}_{pred}_{stem}.png``.

    Args:
        ctx: Run context.
        model: The fitted model.
        calibration: Its calibration.
        rows: The sample rows to draw.
    """
    folder = ctx.artifacts / "extra_output" / "train" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    detector = Detector(TrainedModel(model, model.spec, calibration, {}))
    files, labels = list(rows[cols.FILE]), list(rows[cols.LABEL])
    for batch in detector.iter_predict(files, heatmaps=True):
        for position, prediction in zip(batch.positions, batch.predictions, strict=True):
            if prediction.heatmap is not None:  # every model gives maps, so heatmaps=True gives every heatmap
                name = heatmap_name(labels[position], prediction.label, files[position])
                save_heatmap(prediction.heatmap, folder / name)
    ctx.logger.info(f"saved {len(files)} validation heatmaps (ok->ng, ng->ok, ng->ng) to {folder}")
