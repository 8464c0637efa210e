"""Train step: fit PatchCore or FastFlow on the OK images, set the threshold on validation, report.

Writes ``models/train/`` (weights + ``train_config.json``), ``output/output.csv`` for the
validation rows, the validation reports when validation holds NG images, the threshold sweep
table and plot, and heatmaps of the ok->ng, ng->ok and ng->ng validation cases.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pandas as pd
import timm
import torch
from pydantic import AliasChoices, Field, field_validator

from alo import Asset, Config, Data, PlanError, StepArgs, StepContext
from assets.vad import backbones
from assets.vad.augment import build_augmentation
from assets.vad.images import model_input_size, read_image
from assets.vad.models import ModelSpec, build_model, fastflow, save
from assets.vad.models.fastflow import fit_fastflow
from assets.vad.pixel_metrics import PixelRows
from assets.vad.reports import image_auroc, plot_sweep, write_validation_reports
from assets.vad.scoring import Scorer, loader, score_images
from assets.vad.thresholds import f1_threshold, percentile_threshold, sweep

# Default backbones, chosen from BENCHMARKS.md (accuracy on four products, offline weights only).
DEFAULT_BACKBONE = {"patchcore": "mobilenetv2_100", "fastflow": "tf_efficientnet_lite0"}
# img_size when the plan leaves it out, chosen from BENCHMARKS.md: PatchCore gains most from resolution
# (small defects span more stride-8 patches); FastFlow keeps the reference guide's fixed 256x256.
DEFAULT_IMG_SIZE: dict[str, int | list[int]] = {"patchcore": 320, "fastflow": [256, 256]}
Augmentation = Literal["rotation", "brightness", "contrast", "saturation", "hue", "blur"]


class ModelParameters(StepArgs):
    """``model_parameters`` of the train step; the reference guide's ``*_backborn`` spelling is accepted."""

    fastflow_backbone: str = Field(
        DEFAULT_BACKBONE["fastflow"], validation_alias=AliasChoices("fastflow_backbone", "fastflow_backborn")
    )
    fastflow_layers: list[str] | None = None
    fastflow_flow_steps: int = Field(8, ge=1, le=32)
    fastflow_hidden_ratio: float = Field(1.0, gt=0.0, le=8.0)
    fastflow_conv3x3_only: bool = False
    patchcore_backbone: str = Field(
        DEFAULT_BACKBONE["patchcore"], validation_alias=AliasChoices("patchcore_backbone", "patchcore_backborn")
    )
    patchcore_layers: list[str] | None = None
    patchcore_coreset_sampling_ratio: float = Field(0.1, gt=0.0, le=1.0)
    patchcore_num_neighbors: int = Field(9, ge=1)
    patchcore_search: Literal["auto", "exact"] = "auto"
    patchcore_image_score: Literal["map_max", "reweighted"] = "map_max"
    backbone_weights: str | None = None
    pretrained: bool = True
    early_stopping_patience: int = Field(3, ge=1)


class TrainArgs(StepArgs):
    """Arguments of the train step (reference guide defaults)."""

    model_name: Literal["fastflow", "patchcore"] = "fastflow"
    experiment_seed: int = 42
    img_size: int | list[int] | None = None
    batch_size: int = Field(4, ge=1, le=1024)
    max_epochs: int = Field(15, ge=1, le=1000)
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    monitor_metric: Literal["image_AUROC", "image_F1Score", "loss"] = "image_AUROC"
    save_validation_heatmap: bool = True
    percentile: float = Field(0.8, gt=0.0, le=1.0)
    augmentation_list: list[Augmentation] = Field(default_factory=list)
    augmentation_choice: int = Field(3, ge=0, le=20)
    rotation_angle: int = Field(10, ge=0, le=180)
    brightness_degree: float = Field(0.3, ge=0.0, le=1.0)
    contrast_degree: float = Field(0.3, ge=0.0, le=1.0)
    saturation_degree: float = Field(0.3, ge=0.0, le=1.0)
    hue_degree: float = Field(0.3, ge=0.0, le=0.5)
    blur_kernel_size: int = Field(5, ge=0, le=255)
    model_parameters: ModelParameters = Field(default_factory=ModelParameters)

    @field_validator("img_size")
    @classmethod
    def _check_img_size(cls, value: int | list[int] | None) -> int | list[int] | None:
        if value is None:
            return value
        sizes = [value] if isinstance(value, int) else value
        if (isinstance(value, list) and len(value) != 2) or not all(32 <= size <= 2048 for size in sizes):
            msg = "use an int (e.g. 256) or [height, width], each between 32 and 2048"
            raise ValueError(msg)
        return value

    def input_size(self) -> int | list[int]:
        """The ``img_size`` to use: the plan's, or the model's default when the plan leaves it out.

        Returns:
            An int (shorter side, aspect ratio kept) or ``[height, width]``.
        """
        return self.img_size if self.img_size is not None else DEFAULT_IMG_SIZE[self.model_name]


def seed_everything(seed: int) -> None:
    """Make a run repeatable: seed Python, NumPy and torch, use deterministic kernels.

    Args:
        seed: The experiment seed.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def use_all_cores() -> None:
    """Let torch use every core this process may run on."""
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


class TrainStep(Asset):
    """Fits the model and sets its threshold."""

    Args = TrainArgs

    def run(self, ctx: StepContext, data: Data, config: Config) -> tuple[Data, Config]:
        """Train, validate, threshold, report and save.

        Args:
            ctx: Run context.
            data: Needs ``samples`` from readiness.
            config: Needs ``readiness``.

        Returns:
            ``data`` with ``validation``; ``config`` with ``train``.
        """
        args: TrainArgs = ctx.args  # type: ignore[assignment]
        readiness = config["readiness"]
        samples: pd.DataFrame = data["samples"]
        seed_everything(args.experiment_seed)
        use_all_cores()
        if args.accelerator != "cpu":
            ctx.logger.warning(f"accelerator '{args.accelerator}': this release runs on the CPU only")
        train_rows = samples[(samples["_split"] == "train") & ~samples["_is_ng"]]
        valid_rows = samples[samples["_split"] == "valid"]
        spec = self._spec(args, read_image(train_rows["_file"].iloc[0]))
        weights = ctx.plan.resolve(args.model_parameters.backbone_weights)
        try:
            model = build_model(spec, args.model_parameters.pretrained, weights)
        except backbones.BackboneError as exc:
            raise PlanError(f"plan error: {exc}") from None
        ctx.logger.info(
            f"{spec.model_name}: backbone {spec.backbone} {spec.layers} ({model.weights_source}), "
            f"input {spec.input_size[0]}x{spec.input_size[1]}"
        )
        augment = build_augmentation(
            args.augmentation_list,
            args.augmentation_choice,
            args.rotation_angle,
            args.brightness_degree,
            args.contrast_degree,
            args.saturation_degree,
            args.hue_degree,
            args.blur_kernel_size,
        )
        started = time.perf_counter()
        train_files = list(train_rows["_file"])
        valid_files = list(valid_rows["_file"])
        is_ng = valid_rows["_is_ng"].to_numpy(dtype=bool)
        method = readiness["threshold_method"]
        fit_metrics: dict[str, float] = {}
        if spec.model_name == "patchcore":
            self._fit_patchcore(model, spec, args, train_files, augment, ctx)
        else:
            monitor = "loss" if method == "Percentile" else args.monitor_metric
            fit_metrics = self._fit_fastflow(model, spec, args, train_files, valid_files, is_ng, augment, monitor, ctx)
        fit_seconds = time.perf_counter() - started
        raw = np.empty(len(valid_files), dtype=np.float64)
        pixels = PixelRows(valid_rows)
        for positions, scores, maps in score_images(
            model, valid_files, spec, args.batch_size, ctx.logger, "validation"
        ):
            raw[positions] = scores
            pixels.update(positions, maps)
        threshold, table = self._threshold(raw, is_ng, method, args.percentile)
        scoring = {
            "threshold": threshold,
            "min": float(raw.min()),
            "max": float(raw.max()),
            "ok_class": readiness["ok_class"],
            "ng_name": readiness["ng_name"],
            "threshold_method": method,
            "percentile": args.percentile,
            "weights_source": model.weights_source,
            "fit_seconds": round(fit_seconds, 2),
            "fit_metrics": fit_metrics,
        }
        scorer = Scorer(scoring)
        columns = scorer.columns(raw)
        output = data["dataframe"].loc[valid_rows.index].copy()
        for name, values in columns.items():
            output[name] = values
        output.to_csv(ctx.artifact_path("output", "output.csv"), index=False)
        metrics = self._reports(ctx, table, threshold, is_ng, columns, scorer, spec, pixels.compute())
        if args.save_validation_heatmap:
            self._heatmaps(ctx, model, spec, args, valid_rows, columns, scorer)
        save(model, spec, {**scoring, "validation": metrics}, ctx.model_dir / "train")
        auroc = metrics.get("auroc", float("nan"))
        ctx.logger.info(
            f"trained in {fit_seconds:.1f}s; raw threshold {threshold:.5g} ({method}); "
            f"validation image AUROC {auroc:.4f}"
        )
        data["validation"] = output
        config["train"] = {"spec": spec, "scoring": scoring, "metrics": metrics}
        return data, config

    @staticmethod
    def _spec(args: TrainArgs, reference: object) -> ModelSpec:
        params = args.model_parameters
        name = args.model_name
        raw_backbone = params.patchcore_backbone if name == "patchcore" else params.fastflow_backbone
        layers = params.patchcore_layers if name == "patchcore" else params.fastflow_layers
        try:
            backbone = backbones.resolve_backbone(raw_backbone)
            valid_layers = backbones.available_layers(backbone)
            layers = list(layers) if layers else backbones.default_layers(backbone)
        except backbones.BackboneError as exc:
            raise PlanError(f"plan error: {exc}") from None
        for layer in layers:
            if layer not in valid_layers:
                msg = (
                    f"plan error: '{name}_layers' has '{layer}', not a feature layer of {backbone}; "
                    f"valid layers: {', '.join(valid_layers)}"
                )
                raise PlanError(msg)
        cfg = timm.models.get_pretrained_cfg(backbone)
        height, width = reference.height, reference.width  # type: ignore[attr-defined]
        return ModelSpec(
            model_name=name,
            backbone=backbone,
            layers=layers,
            input_size=list(model_input_size(args.input_size(), height, width)),
            mean=list(cfg.mean),
            std=list(cfg.std),
            coreset_sampling_ratio=params.patchcore_coreset_sampling_ratio,
            num_neighbors=params.patchcore_num_neighbors,
            search=params.patchcore_search,
            image_score=params.patchcore_image_score,
            flow_steps=params.fastflow_flow_steps,
            hidden_ratio=params.fastflow_hidden_ratio,
            conv3x3_only=params.fastflow_conv3x3_only,
        )

    @staticmethod
    def _fit_patchcore(
        model: torch.nn.Module,
        spec: ModelSpec,
        args: TrainArgs,
        files: list[str],
        augment: object | None,
        ctx: StepContext,
    ) -> None:
        passes = [loader(files, spec, args.batch_size)]
        if augment is not None:
            passes.append(loader(files, spec, args.batch_size, augment=augment))
        batches = (images for batch_loader in passes for images, _ in batch_loader)
        model.fit(batches, len(files) * len(passes), spec.coreset_sampling_ratio, args.experiment_seed, ctx.logger)

    @staticmethod
    def _fit_fastflow(
        model: torch.nn.Module,
        spec: ModelSpec,
        args: TrainArgs,
        train_files: list[str],
        valid_files: list[str],
        is_ng: np.ndarray,
        augment: object | None,
        monitor: str,
        ctx: StepContext,
    ) -> dict[str, float]:
        from anomalib.models.image.fastflow.loss import FastflowLoss

        rng = np.random.default_rng(args.experiment_seed)
        valid_features = [model.extract(images) for images, _ in loader(valid_files, spec, args.batch_size)]
        cache_bytes = model.feature_values_per_image * 4 * len(train_files)
        size = args.batch_size
        groups = [range(start, min(start + size, len(train_files))) for start in range(0, len(train_files), size)]

        def extract(batches: list[range]) -> Iterator[list[torch.Tensor]]:
            return (model.extract(images) for images, _ in loader(train_files, spec, size, batches=batches))

        if augment is None and cache_bytes <= fastflow.FEATURE_CACHE_LIMIT:
            cached = list(extract(groups))
            ctx.logger.info(f"backbone features cached for {len(train_files)} training images (frozen backbone)")

            def train_batches() -> list[list[torch.Tensor]]:
                return [cached[i] for i in rng.permutation(len(groups))]
        elif augment is None:  # the batches and order the cache would give, extracted again each epoch
            ctx.logger.info(
                f"backbone features of {len(train_files)} training images would take {cache_bytes / 2**30:.1f} GiB "
                f"(cache limit {fastflow.FEATURE_CACHE_LIMIT / 2**30:.1f} GiB): extracting them every epoch"
            )

            def train_batches() -> object:  # type: ignore[misc]
                return extract([groups[i] for i in rng.permutation(len(groups))])
        else:

            def train_batches() -> object:  # type: ignore[misc]
                shuffled = loader(
                    train_files, spec, args.batch_size, augment, shuffle=True, seed=int(rng.integers(1 << 31))
                )
                return (model.extract(images) for images, _ in shuffled)

        criterion = FastflowLoss()
        ok_mask = ~is_ng

        def evaluate(current: torch.nn.Module) -> dict[str, float]:
            scores, losses, sizes = [], [], []
            current.train()  # one pass per batch: hidden variables give both the loss and the anomaly map
            with torch.no_grad():
                for features in valid_features:
                    hidden, jacobians = current.flow(features)
                    losses.append(float(criterion(hidden, jacobians)))
                    scores.append(current.image_scores(current.anomaly_map_generator(hidden)).reshape(-1).numpy())
                    sizes.append(len(features[0]))
            current.eval()
            raw = np.concatenate(scores)
            best_f1 = float(sweep(raw, is_ng)["f1"].max()) if is_ng.any() else float("nan")
            loss = float(np.average(losses, weights=sizes)) if ok_mask.any() else float("nan")
            return {"image_AUROC": image_auroc(is_ng, raw), "image_F1Score": best_f1, "loss": loss}

        return fit_fastflow(
            model,
            train_batches,
            evaluate,
            args.max_epochs,
            monitor,
            args.model_parameters.early_stopping_patience,
            ctx.logger,
        )

    @staticmethod
    def _threshold(raw: np.ndarray, is_ng: np.ndarray, method: str, percentile: float) -> tuple[float, pd.DataFrame]:
        table = sweep(raw, is_ng)
        if method == "F1":
            return f1_threshold(table), table
        return percentile_threshold(raw[~is_ng], percentile), table

    @staticmethod
    def _reports(
        ctx: StepContext,
        table: pd.DataFrame,
        threshold: float,
        is_ng: np.ndarray,
        columns: dict[str, np.ndarray],
        scorer: Scorer,
        spec: ModelSpec,
        pixel: dict[str, float],
    ) -> dict[str, float]:
        table.to_csv(ctx.artifact_path("extra_output", "train", "threshold_test_result.csv"), index=False)
        plot_sweep(
            table,
            threshold,
            ctx.artifact_path("extra_output", "train", "threshold_test_result.png"),
            f"{spec.model_name} / {spec.backbone}: validation metrics by threshold",
        )
        if not is_ng.any():
            ctx.logger.info("validation holds no NG image: no confusion matrix or classification report")
            return {}
        pred_ng = columns["pred_label"] == scorer.ng_name
        if scorer.ng_name == scorer.ok_name:  # pragma: no cover - readiness prevents it
            pred_ng = columns["anomaly_score"] >= 0.5
        return write_validation_reports(
            ctx.artifacts / "output",
            is_ng,
            pred_ng,
            columns["anomaly_score"],
            scorer.ok_name,
            scorer.ng_name,
            threshold,
            pixel,
        )

    @staticmethod
    def _heatmaps(
        ctx: StepContext,
        model: torch.nn.Module,
        spec: ModelSpec,
        args: TrainArgs,
        valid_rows: pd.DataFrame,
        columns: dict[str, np.ndarray],
        scorer: Scorer,
    ) -> None:
        pred_ng = columns["anomaly_score"] >= 0.5
        keep = pred_ng | valid_rows["_is_ng"].to_numpy(dtype=bool)
        files = list(valid_rows["_file"][keep])
        labels = list(valid_rows["_label"][keep])
        preds = list(columns["pred_label"][keep])
        folder = ctx.artifacts / "extra_output" / "train" / "images"
        for positions, _, maps in score_images(model, files, spec, args.batch_size, ctx.logger, "heatmaps"):
            for position, raw_map in zip(positions, maps, strict=True):
                scorer.save_heatmap(files[position], raw_map, labels[position], preds[position], folder)
        ctx.logger.info(f"saved {len(files)} validation heatmaps (ok->ng, ng->ok, ng->ng) to {folder}")


ASSET = TrainStep
