"""Inference step: score every image through the :class:`~vad.detector.Detector`.

Rows of ``output/output.csv`` are appended batch by batch as images are scored (in the staged
artifacts, promoted only when the run succeeds), so a long run shows its results as it goes and
holds no anomaly maps beyond the current batch. Heatmap pictures are deferred files (``ctx.defer_file``): in a
batch run they are drawn from the maps scored with the images and written after the steps, before promotion (a
few maps are held at a time); in the edge loop the images are scored without maps (the answer does not wait for
them) and the loop's background thread scores each again with its map, draws and writes the picture. With
labels, metrics are computed on the labelled rows (``score/inference_score.csv``). The first
``save_output_images`` scored images are copied into ``output/`` beside ``output.csv`` (:mod:`vad.output_images`:
the edge result's picture, and retraining data), also deferred writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from alo import Asset, Config, Data, StepArgs, StepContext
from vad import metrics
from vad import samples as cols
from vad.calibration import DEFAULT_INFERENCE_THRESHOLD
from vad.csv_rows import CsvRows, column_cells, frame_text, rows_text
from vad.detector import Detector, PredictionBatch, resident_detector
from vad.heatmaps import UNKNOWN_LABEL, heatmap_name, heatmap_png
from vad.ood.verdict import REJECTED_LABEL, OodAction
from vad.output_images import MANIFEST, choose_output_images, save_output_image, write_manifest
from vad.pixel_metrics import PixelRows
from vad.png import encode_png
from vad.runtime import use_all_cores

BATCH_SIZE = 8


class InferenceArgs(StepArgs):
    """Arguments of the inference step."""

    inference_threshold: float = Field(DEFAULT_INFERENCE_THRESHOLD, ge=0.0, le=1.0)
    save_anomaly_maps: bool = False
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    runtime: Literal["auto", "torch", "openvino", "onnxruntime"] = "auto"
    save_output_images: int = Field(1, ge=0)  # the first N scored images, copied into output/ (edge picture)
    ood_action: OodAction = "flag"  # what an out-of-distribution image becomes (vad.ood.verdict)


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
        args = ctx.args_as(InferenceArgs)
        use_all_cores()
        detector = resident_detector(
            ctx.model_dir, args.accelerator, args.inference_threshold, args.runtime, args.ood_action
        )
        spec, calibration = detector.spec, detector.calibration
        samples: pd.DataFrame = data["samples"]
        if cols.LABEL in samples:  # NG where a label is given and is not the OK name; <NA> without a label
            samples = samples.assign(**{cols.IS_NG: (samples[cols.LABEL] != calibration.ok_name).astype("boolean")})
        files = list(samples[cols.FILE])
        labels = list(samples[cols.LABEL].fillna(UNKNOWN_LABEL)) if cols.LABEL in samples else None
        ctx.logger.info(
            f"scoring {len(files)} image(s) with {spec.model_name}/{spec.backbone} ({detector.trained.label}) "
            f"at {spec.input_size[0]}x{spec.input_size[1]}, inference_threshold {args.inference_threshold}"
        )
        folder = ctx.artifacts / "extra_output" / "inference" / "images"
        pixels = PixelRows(samples)
        frame: pd.DataFrame = data["dataframe"]
        rows = frame if frame.index.equals(samples.index) else frame.loc[samples.index]  # rows readiness kept
        output = CsvRows(ctx.artifact_path("output", "output.csv"))
        cells = _row_cells(rows)
        scored: dict[str, list[np.ndarray]] = {}
        flags = []
        threshold = calibration.inference_threshold  # the region drawn on the heatmap pictures
        later = args.save_anomaly_maps and ctx.files_in_background  # the edge loop: maps scored after the answer
        maps_now = args.save_anomaly_maps and not later
        for batch in detector.iter_predict(
            files, BATCH_SIZE, maps=maps_now, progress_logger=ctx.logger, raw_maps=pixels.wanted
        ):
            if batch.raw_maps is not None:
                pixels.update(batch.positions, batch.raw_maps)
            output.write_text(_batch_text(rows, cells, batch, header=output.rows == 0), len(batch.positions))
            for name, values in batch.scored.columns.items():
                scored.setdefault(name, []).append(values)
            flags.append(batch.scored.is_anomalous)
            for position, prediction in zip(batch.positions, batch.predictions, strict=True):
                if later or prediction.anomaly_map is not None:  # the picture is drawn after the answer
                    label = labels[position] if labels else UNKNOWN_LABEL
                    path = folder / heatmap_name(label, prediction.label, files[position])
                    ng = prediction.is_anomalous  # an NG part's picture is kept first when some must be dropped
                    if prediction.anomaly_map is None:
                        ctx.defer_file(path, _scored_heatmap_png, detector, files[position], first=ng)
                    else:
                        ctx.defer_file(path, heatmap_png, files[position], prediction.anomaly_map, threshold, first=ng)
        self._keep_output_images(ctx, files, args.save_output_images)
        predictions = rows.assign(**{name: np.concatenate(parts) for name, parts in scored.items()})  # input order
        is_anomalous = np.concatenate(flags)
        judged_ng = is_anomalous & (predictions["pred_label"] != REJECTED_LABEL).to_numpy()  # rejected: no verdict
        summary: dict[str, object] = {"n_images": len(files), "n_pred_ng": int(judged_ng.sum())}
        summary["n_ood"] = self._count_ood(ctx, predictions, args.ood_action) if detector.has_ood_check else None
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
    def _count_ood(ctx: StepContext, predictions: pd.DataFrame, action: str) -> int:
        """How many scored images are out of distribution (logged as a warning when any are)."""
        outside = int((~predictions["in_distribution"].astype(bool)).sum())
        if outside:
            became = "rejected (pred_label rejected)" if action == "reject" else "flagged (in_distribution False)"
            ctx.logger.warning(
                f"{outside} of {len(predictions)} image(s) are out of distribution, not the kind of image the model "
                f"was trained on: {became}; check the camera, the light and the product, or retrain with such images"
            )
        return outside

    @staticmethod
    def _keep_output_images(ctx: StepContext, files: list[str], limit: int) -> None:
        """Copy the first ``limit`` scored images into ``output/`` (deferred) and list them in its manifest."""
        kept = choose_output_images(files, limit)
        if not kept:
            return
        folder = ctx.artifacts / "output"
        for image in kept:
            ctx.defer(save_output_image, Path(image.source), folder / image.name)  # after the edge loop's answer
        write_manifest(kept, ctx.artifact_path("output", MANIFEST))
        shown = ", ".join(image.name for image in kept[:3]) + (", ..." if len(kept) > 3 else "")
        ctx.logger.info(f"{len(kept)} of {len(files)} scored image(s) kept in output/ ({shown})")

    @staticmethod
    def _labelled_scores(
        ctx: StepContext, samples: pd.DataFrame, predictions: pd.DataFrame, is_anomalous: np.ndarray, pixels: PixelRows
    ) -> dict[str, float]:
        """Image metrics on the labelled rows (AUROC on raw scores) and pixel metrics, to ``inference_score.csv``."""
        labelled = samples[cols.IS_NG].notna().to_numpy()
        if not labelled.all():
            ctx.logger.info(f"labels on {int(labelled.sum())} of {len(labelled)} rows: metrics use those rows only")
        if not labelled.any():
            return {}
        is_ng = samples[cols.IS_NG].to_numpy()[labelled].astype(bool)
        scores = metrics.classification_scores(
            is_ng, is_anomalous[labelled], predictions["raw_score"].to_numpy()[labelled]
        )
        scores.update(pixels.compute())
        pd.DataFrame([scores]).to_csv(ctx.artifact_path("score", "inference_score.csv"), index=False)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
        ctx.logger.info(f"labels found, scores written to score/inference_score.csv: {shown}")
        return scores


def _scored_heatmap_png(detector: Detector, source: str) -> bytes:
    """An image's heatmap picture as PNG bytes, scored again with its map (the edge loop's background thread)."""
    picture = detector.predict(source, heatmaps=True).heatmap
    if picture is None:
        msg = f"the model drew no heatmap for {source}"
        raise RuntimeError(msg)
    return encode_png(np.asarray(picture))


def _row_cells(rows: pd.DataFrame) -> list[list[object]] | None:
    """The CSV cells of the input rows, column by column, once per run (None: pandas writes each batch)."""
    found = [column_cells(rows.iloc[:, position]) for position in range(rows.shape[1])]
    cells = [column for column in found if column is not None]
    return cells if len(cells) == len(found) else None


def _batch_text(rows: pd.DataFrame, cells: list[list[object]] | None, batch: PredictionBatch, header: bool) -> str:
    """output.csv's text for one batch: its input rows, then the scored columns (as ``DataFrame.assign`` adds them)."""
    columns = batch.scored.columns
    found = [column_cells(values) for values in columns.values()]
    scored = [column for column in found if column is not None]
    if cells is None or len(scored) != len(found) or any(name in rows.columns for name in columns):
        return frame_text(rows.iloc[batch.positions].assign(**columns), header)  # pandas writes it
    first, last = int(batch.positions[0]), int(batch.positions[-1]) + 1  # batches are consecutive rows
    names = [*rows.columns, *columns]
    return rows_text(names, [column[first:last] for column in cells] + scored, header)


ASSET = InferenceStep
