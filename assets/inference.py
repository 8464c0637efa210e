"""Inference step: score every image with the trained model, optionally saving heatmaps.

Rows of ``output/output.csv`` are appended batch by batch as images are scored (in the staged
artifacts, promoted only when the run succeeds), so a long run shows its results as it goes and
holds no anomaly maps beyond the current batch (except the small copies kept for pixel metrics).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pydantic import Field

from alo import Asset, Config, Data, StepArgs, StepContext
from assets.train import use_all_cores
from assets.vad.models import load
from assets.vad.pixel_metrics import PixelRows
from assets.vad.reports import classification_scores
from assets.vad.scoring import Scorer, score_images

BATCH_SIZE = 8


class InferenceArgs(StepArgs):
    """Arguments of the inference step."""

    inference_threshold: float = Field(0.5, ge=0.0, le=1.0)
    save_anomaly_maps: bool = False


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
        frame.to_csv(self.path, mode="w" if first else "a", header=first, index=False)
        self.rows += len(frame)


class InferenceStep(Asset):
    """Scores the images prepared by readiness."""

    Args = InferenceArgs

    def run(self, ctx: StepContext, data: Data, config: Config) -> tuple[Data, Config]:
        """Score, label and (optionally) draw heatmaps.

        Args:
            ctx: Run context (``ctx.model_dir`` holds the trained model).
            data: Needs ``samples`` and ``dataframe``.
            config: Needs ``readiness``.

        Returns:
            ``data`` with ``predictions``; ``config`` with ``inference``.
        """
        args: InferenceArgs = ctx.args  # type: ignore[assignment]
        use_all_cores()
        model, spec, scoring = load(ctx.model_dir / "train")
        scorer = Scorer(scoring, args.inference_threshold)
        samples: pd.DataFrame = data["samples"]
        files = list(samples["_file"])
        labels = list(samples["_label"]) if "_label" in samples else ["unknown"] * len(files)
        folder = ctx.artifacts / "extra_output" / "inference" / "images"
        ctx.logger.info(
            f"scoring {len(files)} image(s) with {spec.model_name}/{spec.backbone} "
            f"at {spec.input_size[0]}x{spec.input_size[1]}, inference_threshold {args.inference_threshold}"
        )
        pixels = PixelRows(samples)
        rows = data["dataframe"].loc[samples.index]
        output = CsvRows(ctx.artifact_path("output", "output.csv"))
        batches = []
        for positions, scores, maps in score_images(model, files, spec, BATCH_SIZE, ctx.logger, "inference"):
            pixels.update(positions, maps)
            batch = rows.iloc[positions].assign(**scorer.columns(scores))
            output.append(batch)
            batches.append(batch)
            if args.save_anomaly_maps:
                for position, raw_map, pred in zip(positions, maps, batch["pred_label"], strict=True):
                    scorer.save_heatmap(files[position], raw_map, labels[position], str(pred), folder)
        predictions = pd.concat(batches)  # the loader keeps file order, so this is output.csv's row order
        pred_ng = (predictions["pred_label"] == scorer.ng_name).to_numpy()
        summary: dict[str, object] = {"n_images": len(files), "n_pred_ng": int(pred_ng.sum())}
        if "_is_ng" in samples:
            is_ng = samples["_is_ng"].to_numpy(dtype=bool)
            scores = classification_scores(is_ng, pred_ng, predictions["anomaly_score"].to_numpy())
            scores.update(pixels.compute())
            pd.DataFrame([scores]).to_csv(ctx.artifact_path("output", "inference_score.csv"), index=False)
            summary["labelled_scores"] = scores
            shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
            ctx.logger.info(f"labels found, scores written to output/inference_score.csv: {shown}")
        data["predictions"] = predictions
        config["inference"] = {
            **summary,
            "model_name": spec.model_name,
            "ok_class": scorer.ok_name,
            "ng_name": scorer.ng_name,
            "inference_threshold": args.inference_threshold,
        }
        return data, config


ASSET = InferenceStep
