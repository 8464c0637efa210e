"""Inference step: score every image through the :class:`~assets.vad.detector.Detector`.

Rows of ``output/output.csv`` are appended batch by batch as images are scored (in the staged
artifacts, promoted only when the run succeeds), so a long run shows its results as it goes and
holds no anomaly maps beyond the current batch. Heatmap files are deferred writes (``ctx.defer``): the
runner writes them after the steps, and after the edge loop has answered with the summary, before the run's
artifacts are promoted (a few pictures are held at a time). With labels, metrics are computed on the
labelled rows (``output/inference_score.csv``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from alo import Asset, Config, Data, StepArgs, StepContext
from assets.vad import samples as cols
from assets.vad.calibration import DEFAULT_INFERENCE_THRESHOLD
from assets.vad.detector import resident_detector
from assets.vad.heatmaps import heatmap_name, save_heatmap
from assets.vad.pixel_metrics import PixelRows
from assets.vad.runtime import use_all_cores

BATCH_SIZE = 8
UNKNOWN_LABEL = "unknown"  # heatmap file names of images without a label


class InferenceArgs(StepArgs):
    """Arguments of the inference step."""

    inference_threshold: float = Field(DEFAULT_INFERENCE_THRESHOLD, ge=0.0, le=1.0)
    save_anomaly_maps: bool = False
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"


class CsvRows:
    """Appends rows to a CSV file: the header with the first rows, then each batch, closed after each write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0

    def append(self, frame: pd.DataFrame) -> None:
        """Write a batch of rows.

        Args:
            frame: Rows with the same columns as every other batch.
        """
        first = self.rows == 0
        text = frame.to_csv(header=first, index=False)  # as text: pandas' file handling costs more than a row
        with self.path.open("w" if first else "a", encoding="utf-8", newline="") as handle:
            handle.write(text)
        self.rows += len(frame)


class InferenceStep(Asset):
    """Scores the images prepared by readiness."""

    Args = InferenceArgs

    def run(self, ctx: StepContext, data: Data, config: Config) -> tuple[Data, Config]:
        """Score, label and (optionally) draw heatmaps.

        Args:
            ctx: Run context (``ctx.model_dir`` holds the trained model).
            data: Needs ``samples`` and ``dataframe``.
            config: Flowing settings.

        Returns:
            ``data`` with ``predictions`` and ``is_anomalous``; ``config`` with ``inference``.
        """
        args: InferenceArgs = ctx.args  # type: ignore[assignment]
        use_all_cores()
        detector = resident_detector(ctx.model_dir, args.accelerator, args.inference_threshold)
        spec, calibration = detector.spec, detector.calibration
        samples: pd.DataFrame = data["samples"]
        if cols.LABEL in samples:  # NG where a label is given and is not the OK name; <NA> without a label
            samples = samples.assign(**{cols.IS_NG: (samples[cols.LABEL] != calibration.ok_name).astype("boolean")})
        files = list(samples[cols.FILE])
        labels = list(samples[cols.LABEL].fillna(UNKNOWN_LABEL)) if cols.LABEL in samples else None
        ctx.logger.info(
            f"scoring {len(files)} image(s) with {spec.model_name}/{spec.backbone} "
            f"at {spec.input_size[0]}x{spec.input_size[1]}, inference_threshold {args.inference_threshold}"
        )
        folder = ctx.artifacts / "extra_output" / "inference" / "images"
        pixels = PixelRows(samples)
        rows = data["dataframe"].loc[samples.index]
        output = CsvRows(ctx.artifact_path("output", "output.csv"))
        batches, flags = [], []
        for batch in detector.iter_predict(
            files, BATCH_SIZE, heatmaps=args.save_anomaly_maps, progress_logger=ctx.logger, raw_maps=pixels.wanted
        ):
            if batch.raw_maps is not None:
                pixels.update(batch.positions, batch.raw_maps)
            frame = rows.iloc[batch.positions].assign(**batch.scored.columns)
            output.append(frame)
            batches.append(frame)
            flags.append(batch.scored.is_anomalous)
            for position, prediction in zip(batch.positions, batch.predictions, strict=True):
                if prediction.heatmap is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                    label = labels[position] if labels else UNKNOWN_LABEL
                    path = folder / heatmap_name(label, prediction.label, files[position])
                    ctx.defer(save_heatmap, prediction.heatmap, path)  # after the edge loop's answer
        predictions = pd.concat(batches)  # in input order: output.csv's rows
        is_anomalous = np.concatenate(flags)
        summary: dict[str, object] = {"n_images": len(files), "n_pred_ng": int(is_anomalous.sum())}
        if cols.IS_NG in samples:
            summary["labelled_scores"] = self._labelled_scores(ctx, samples, predictions, is_anomalous, pixels)
        data["samples"] = samples
        data["predictions"] = predictions
        data["is_anomalous"] = is_anomalous
        config["inference"] = {
            **summary,
            "model_name": spec.model_name,
            "ok_class": calibration.ok_name,
            "ng_name": calibration.ng_name,
            "inference_threshold": args.inference_threshold,
        }
        return data, config

    @staticmethod
    def _labelled_scores(
        ctx: StepContext, samples: pd.DataFrame, predictions: pd.DataFrame, is_anomalous: np.ndarray, pixels: PixelRows
    ) -> dict[str, float]:
        """Image metrics on the labelled rows (AUROC on raw scores) and pixel metrics, to ``inference_score.csv``."""
        from assets.vad.reports import classification_scores  # sklearn: imported by labelled runs only

        labelled = samples[cols.IS_NG].notna().to_numpy()
        if not labelled.all():
            ctx.logger.info(f"labels on {int(labelled.sum())} of {len(labelled)} rows: metrics use those rows only")
        if not labelled.any():
            return {}
        is_ng = samples[cols.IS_NG].to_numpy()[labelled].astype(bool)
        scores = classification_scores(is_ng, is_anomalous[labelled], predictions["raw_score"].to_numpy()[labelled])
        scores.update(pixels.compute())
        pd.DataFrame([scores]).to_csv(ctx.artifact_path("output", "inference_score.csv"), index=False)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
        ctx.logger.info(f"labels found, scores written to output/inference_score.csv: {shown}")
        return scores


ASSET = InferenceStep
