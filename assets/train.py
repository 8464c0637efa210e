"""Train step: fit the chosen model on the OK images, calibrate it on validation, report, save.

Writes ``models/train/`` (weights, ``train_config.json``, ``calibration.json``), ``output/output.csv``
for the validation rows, the validation reports when validation holds NG images, the threshold sweep
table and plot, and heatmaps of the ok->ng, ng->ok and ng->ng validation cases. The model is
whatever the registry (:mod:`assets.vad.models`) names: this step never branches on it.
"""

from __future__ import annotations

import time
from typing import Literal

import pandas as pd
from pydantic import Field, field_validator, model_validator

from alo import Asset, Config, Data, PlanError, StepArgs, StepContext
from assets.vad import samples as cols
from assets.vad.augment import RandomAugment, build_augmentation
from assets.vad.backbones import BackboneError
from assets.vad.calibration import Calibration
from assets.vad.images import read_image
from assets.vad.models import MODELS, entry, feature_cache, model_parameters_class
from assets.vad.models.base import FitData, FitOptions, VadModel
from assets.vad.models.export import DEFAULT_FORMATS, export_saved
from assets.vad.models.factory import build_model, make_spec, save
from assets.vad.pixel_metrics import PixelRows
from assets.vad.runtime import resolve_device, seed_everything, use_all_cores
from assets.vad.supervised_fit import fit_supervised
from assets.vad.train_reports import save_heatmaps, score_validation, write_reports

Augmentation = Literal["rotation", "brightness", "contrast", "saturation", "hue", "blur"]
ModelName = Literal[tuple(MODELS)]  # type: ignore[valid-type]
ModelParameters = model_parameters_class()


class TrainArgs(StepArgs):
    """Arguments of the train step (reference guide defaults)."""

    model_name: ModelName = "fastflow"
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
    model_parameters: ModelParameters = Field(default_factory=ModelParameters)  # type: ignore[valid-type]
    export: list[Literal["openvino", "onnx"]] = Field(default_factory=lambda: list(DEFAULT_FORMATS))
    precision: Literal["fp32", "int8"] = "fp32"
    supervised: bool = False

    @model_validator(mode="after")
    def _check_precision(self) -> TrainArgs:
        if self.precision == "int8" and "openvino" not in self.export:
            msg = "precision int8 quantises the OpenVINO graph: add openvino to the train arg export, or use fp32"
            raise ValueError(msg)
        return self

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
        if self.img_size is not None:
            return self.img_size
        default = entry(self.model_name).params.DEFAULT_IMG_SIZE
        return default if isinstance(default, int) else list(default)


class TrainStep(Asset):
    """Fits the model and calibrates its threshold."""

    Args = TrainArgs

    def run(self, ctx: StepContext, data: Data, config: Config) -> tuple[Data, Config]:
        """Build, fit, score validation, calibrate, write the outputs, save.

        Args:
            ctx: Run context.
            data: Needs ``samples`` and ``dataframe``.
            config: Needs ``readiness``.

        Returns:
            ``data`` with ``validation``; ``config`` with ``train``.
        """
        args: TrainArgs = ctx.args  # type: ignore[assignment]
        readiness = config["readiness"]
        samples: pd.DataFrame = data["samples"]
        seed_everything(args.experiment_seed)
        use_all_cores()
        valid_rows = samples[samples[cols.SPLIT] == cols.VALID]
        train = FitData(list(samples[(samples[cols.SPLIT] == cols.TRAIN) & ~samples[cols.IS_NG]][cols.FILE]))
        valid = FitData(list(valid_rows[cols.FILE]), valid_rows[cols.IS_NG].to_numpy(dtype=bool))
        model = self._build(ctx, args, train.files[0])
        method = readiness["threshold_method"]
        options = FitOptions(
            batch_size=args.batch_size,
            max_epochs=args.max_epochs,
            seed=args.experiment_seed,
            monitor="loss" if method == "Percentile" else args.monitor_metric,
            augment=self._augmentation(args),
        )
        started = time.perf_counter()
        fit_metrics = model.fit(train, valid, options, ctx.logger)
        fit_seconds = time.perf_counter() - started
        with feature_cache.suspended():  # the validation images/s the tuner ranks ties by: never from a memo
            raw, pixels = score_validation(model, valid.files, PixelRows(valid_rows), args.batch_size, ctx.logger)
        scoring_seconds = time.perf_counter() - started - fit_seconds
        supervised = None
        if args.supervised:  # the head learns from the NG images too; validation is then scored out of fold
            supervised = fit_supervised(model, train, valid, raw, args.batch_size, args.experiment_seed, ctx.logger)
            raw = supervised.scores
        calibration, table = Calibration.fit(
            raw, valid.is_ng, method, args.percentile, readiness["ok_class"], readiness["ng_name"]
        )
        scored = calibration.apply(raw)
        output = data["dataframe"].loc[valid_rows.index].assign(**scored.columns)
        output.to_csv(ctx.artifact_path("output", "output.csv"), index=False)
        metrics = write_reports(ctx, table, calibration, valid.is_ng, scored, pixels, model.spec)
        if args.save_validation_heatmap:
            keep = scored.is_anomalous | valid.is_ng  # the ok->ng, ng->ok and ng->ng cases
            save_heatmaps(ctx, model, calibration, valid_rows[keep])
        training = {
            "weights_source": model.weights_source,
            "fit_seconds": round(fit_seconds, 2),
            "validation_images_per_s": round(len(valid.files) / max(scoring_seconds, 1e-9), 2),  # the tuner's tie
            "fit_metrics": fit_metrics,
            "supervised": supervised.record if supervised is not None else {"used": False, "reason": "off"},
            "validation": metrics,
        }
        save(model, calibration, training, ctx.model_dir / "train")
        if args.export:  # each graph proven on the validation images, or refused (logged)
            export_saved(ctx.model_dir / "train", valid.files, args.export, args.precision, valid.is_ng, train.files)
        ctx.logger.info(
            f"trained in {fit_seconds:.1f}s; raw threshold {calibration.threshold:.5g} ({method}); "
            f"validation image AUROC {metrics.get('auroc', float('nan')):.4f}"
        )
        data["validation"] = output
        config["train"] = {"spec": model.spec, "calibration": calibration, "metrics": metrics}
        return data, config

    @staticmethod
    def _build(ctx: StepContext, args: TrainArgs, first_file: str) -> VadModel:
        """The untrained model the plan describes (plan errors for bad backbones, layers or devices)."""
        params = args.model_parameters
        reference = read_image(first_file)
        try:
            spec = make_spec(
                args.model_name,
                params.for_model(args.model_name),
                args.input_size(),
                (reference.height, reference.width),
            )
            model = build_model(spec, params.pretrained, ctx.plan.resolve(params.backbone_weights))
        except (BackboneError, ValueError) as exc:
            raise PlanError(f"plan error: {exc}") from None
        model.to(resolve_device(args.accelerator))
        ctx.logger.info(
            f"{spec.model_name}: backbone {spec.backbone} {spec.layers} ({model.weights_source}), "
            f"input {spec.input_size[0]}x{spec.input_size[1]}, on {model.device}"
        )
        return model

    @staticmethod
    def _augmentation(args: TrainArgs) -> RandomAugment | None:
        return build_augmentation(
            args.augmentation_list,
            args.augmentation_choice,
            args.rotation_angle,
            args.brightness_degree,
            args.contrast_degree,
            args.saturation_degree,
            args.hue_degree,
            args.blur_kernel_size,
        )


ASSET = TrainStep
