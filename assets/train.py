"""Train step: fit the chosen model on the OK images, calibrate it on validation, report, save.

Writes ``models/train/`` (weights, ``train_config.json``, ``calibration.json``), ``output/output.csv``
for the validation rows, the validation reports when validation holds NG images, the threshold sweep
table and plot, and heatmaps of the ok->ng, ng->ok and ng->ng validation cases. The model is
whatever the registry (:mod:`vad.models`) names: this step never branches on it.
"""

from __future__ import annotations

import gc
import time

import pandas as pd

from alo import Asset, Config, Data, PlanError, StepContext
from vad import samples as cols
from vad import threshold_policy
from vad.augment import RandomAugment, build_augmentation
from vad.backbones import BackboneError
from vad.calibration import Calibration
from vad.export.writer import export_saved
from vad.images import read_image
from vad.models import epochs, feature_cache
from vad.models.base import FitData, FitOptions, VadModel
from vad.models.factory import build_model, make_spec, save
from vad.ood.check import MIN_IMAGES
from vad.ood.fitting import fit_check
from vad.pixel_metrics import PixelRows
from vad.runtime import resolve_device, seed_everything, use_all_cores
from vad.supervised_fit import fit_supervised
from vad.train_reports import save_heatmaps, score_validation, write_reports
from vad.train_settings import TrainArgs

__all__ = ["TrainArgs", "TrainStep"]


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
        args = ctx.args_as(TrainArgs)
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
            monitor=threshold_policy.method(method).monitor(args.monitor_metric),
            augment=self._augmentation(args),
            on_epoch=epochs.reporter(),  # the tuner's pruning, when a study runs this fit
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
        self._fit_ood_check(ctx, model, train, valid, args)
        spec = model.spec
        del model  # the export loads the saved model: the fitted one (its memory bank and search index) goes first
        if args.export:  # each graph proven on the validation images, or refused (logged)
            gc.collect()
            export_saved(ctx.model_dir / "train", valid.files, args.export, args.precision, valid.is_ng, train.files)
        ctx.logger.info(
            f"trained in {fit_seconds:.1f}s; raw threshold {calibration.threshold:.5g} ({method}); "
            f"validation image AUROC {metrics.get('auroc', float('nan')):.4f}"
        )
        data["validation"] = output
        config["train"] = {"spec": spec, "calibration": calibration, "metrics": metrics}
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
    def _fit_ood_check(ctx: StepContext, model: VadModel, train: FitData, valid: FitData, args: TrainArgs) -> None:
        """Fit the out-of-distribution check on the OK images and save it with the model (before any export)."""
        valid_ok = [file for file, is_ng in zip(valid.files, valid.is_ng, strict=True) if not is_ng]
        check = fit_check(model.describe, train.files, valid_ok, model.spec, args.batch_size, args.experiment_seed)
        if check is None:
            ctx.logger.warning(
                f"no out-of-distribution check: {len(train.files)} OK training image(s), it needs {MIN_IMAGES}"
            )
            return
        check.save(ctx.model_dir / "train")
        ctx.logger.info(
            f"out-of-distribution check fitted on {check.images['train']} OK image(s), its threshold set on "
            f"{check.images['held_out']} held out"
        )

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
