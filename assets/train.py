"""Train step: fit the chosen model on the OK images, calibrate it on validation, report, save.

Writes ``models/train/`` (weights, ``train_config.json``, ``calibration.json``, ``drift_reference.json``),
``output/output.csv`` for the validation rows, the validation reports when validation holds NG images, the
threshold sweep table and plot, and heatmaps of the ok->ng, ng->ok and ng->ng validation cases. The model is
whatever the registry (:mod:`vad.models`) names: this step never branches on it.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from alo import Asset, Config, Data, PlanError, StepContext
from vad import samples as cols
from vad import threshold_policy
from vad.augment import RandomAugment, build_augmentation
from vad.backbones import BackboneError
from vad.calibration import Calibration
from vad.drift.reference import save_drift_reference
from vad.export.writer import export_saved
from vad.feedback_rows import add_verdicts, learnt_review_ids, read_verdicts
from vad.images import read_image
from vad.models import epochs, feature_cache
from vad.models.base import FitData, FitOptions, VadModel
from vad.models.factory import build_model, make_spec, save
from vad.models.saved import WEIGHTS_FILE, read_saved
from vad.models.spec import ModelSpec
from vad.ood import OodCheck
from vad.ood.check import MIN_IMAGES
from vad.ood.descriptor import descriptor_tap
from vad.ood.fitting import capped, describe_files, evenly_spaced
from vad.pixel_metrics import PixelRows
from vad.runtime import resolve_device, seed_everything, use_all_cores
from vad.supervised_fit import fit_supervised
from vad.train_reports import save_heatmaps, score_validation, write_reports
from vad.train_settings import TrainArgs

__all__ = ["TrainArgs", "TrainStep"]


@dataclass
class OodInputs:
    """Descriptors the out-of-distribution check can be fitted on without a pass of its own.

    Attributes:
        fitted: Of the images the fit (or update) read, where the model gives them.
        incremental: Whether the model was updated (its new images only were read).
        validation: Of every validation image, in order, from the validation scoring (None: not given).
    """

    fitted: np.ndarray | None
    incremental: bool
    validation: np.ndarray | None = None


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
        feedback: dict[str, object] = {}
        new_ok: list[str] = []
        if args.feedback_csv:  # the engineer's verdicts: rows of this run only, never the user's data
            verdicts = read_verdicts(ctx.plan.resolve(args.feedback_csv) or Path(args.feedback_csv))
            rows = add_verdicts(samples, data["dataframe"], verdicts, readiness, ctx.logger)
            samples, data["dataframe"], data["samples"] = rows.samples, rows.frame, rows.samples
            seen = self._verdicts_learnt(ctx, args)  # OK images an updated model holds already
            new_ok = [file for file, i in zip(rows.ok_files, rows.ok_ids, strict=True) if i not in seen]
            feedback = {"ok": len(new_ok), "ng": rows.ng, "review_ids": rows.review_ids}
        valid_rows = samples[samples[cols.SPLIT] == cols.VALID]
        train = FitData(list(samples[(samples[cols.SPLIT] == cols.TRAIN) & ~samples[cols.IS_NG]][cols.FILE]))
        valid = FitData(list(valid_rows[cols.FILE]), valid_rows[cols.IS_NG].to_numpy(dtype=bool))
        spec = self._spec(args, train.files[0])
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
        passes = 2 if options.augment is not None else 1  # a one-pass fit reads each image once more augmented
        with descriptor_tap() as fitted:  # the out-of-distribution descriptors of what the fit reads
            model = self._updated(ctx, args, spec, FitData(new_ok), options) if args.update_from else None
            if model is not None:
                fit_metrics: dict[str, Any] = {"updated_with": len(new_ok)}
                update = {"from": str(args.update_from), "incremental": True, **feedback}
                read = len(new_ok) * passes
            else:
                model = self._build(ctx, args, spec)
                fit_metrics = model.fit(train, valid, options, ctx.logger)
                update = {"from": str(args.update_from), "incremental": False, **feedback} if args.update_from else {}
                read = len(train.files) * passes
        fit_seconds = time.perf_counter() - started
        fit_descriptors = model.fit_pass_descriptors(fitted, read) if read else None
        described = OodInputs(fit_descriptors, bool(update.get("incremental")))
        with feature_cache.suspended(), descriptor_tap() as validated:  # never from a memo: the tuner's images/s
            raw, pixels = score_validation(model, valid.files, PixelRows(valid_rows), args.batch_size, ctx.logger)
        described.validation = torch.cat(validated).float().cpu().numpy() if validated else None
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
        if update or feedback:
            training["update"] = update or {"from": None, "incremental": False, **feedback}
        save(model, calibration, training, ctx.model_dir / "train")
        self._fit_ood_check(ctx, model, train, valid, args, described)
        save_drift_reference(ctx.model_dir / "train", scored, valid.is_ng, described.validation)
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
    def _spec(args: TrainArgs, first_file: str) -> ModelSpec:
        """The spec of the model the plan describes (plan errors for bad backbones or layers)."""
        params = args.model_parameters
        reference = read_image(first_file)
        try:
            return make_spec(
                args.model_name,
                params.for_model(args.model_name),
                args.input_size(),
                (reference.height, reference.width),
            )
        except (BackboneError, ValueError) as exc:
            raise PlanError(f"plan error: {exc}") from None

    @staticmethod
    def _base_folder(ctx: StepContext, args: TrainArgs) -> Path | None:
        """The ``models/train`` folder of ``update_from`` (a models folder or its train subfolder), or None."""
        if not args.update_from:
            return None
        base = ctx.plan.resolve(args.update_from) or Path(args.update_from)
        return base / "train" if (base / "train").is_dir() else base

    def _verdicts_learnt(self, ctx: StepContext, args: TrainArgs) -> set[str]:
        """The review ids the ``update_from`` model was updated with already (none without one)."""
        folder = self._base_folder(ctx, args)
        return learnt_review_ids(read_saved(folder).training) if folder is not None else set()

    def _updated(
        self, ctx: StepContext, args: TrainArgs, spec: ModelSpec, new: FitData, options: FitOptions
    ) -> VadModel | None:
        """The model of ``update_from`` with the new OK images added, or None where it cannot be updated (logged)."""
        folder = self._base_folder(ctx, args)
        if folder is None:
            return None
        saved = read_saved(folder)
        if saved.spec != spec:
            ctx.logger.warning(
                f"the plan's model ({spec.model_name}, {spec.backbone}, {spec.input_size}) is not the one in {folder} "
                f"({saved.spec.model_name}, {saved.spec.backbone}, {saved.spec.input_size}): trained from scratch"
            )
            return None
        model = build_model(saved.spec, pretrained=False)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
        model.weights_source = str(saved.training.get("weights_source", model.weights_source))
        model.to(resolve_device(args.accelerator))
        if not new.files:
            ctx.logger.info(f"no new OK images: the model of {folder} is kept as it is, its threshold derived again")
            return model
        if not model.update(new, options, ctx.logger):
            ctx.logger.info(f"{spec.model_name} cannot be updated in place: trained again with the new images added")
            return None
        ctx.logger.info(f"{spec.model_name} updated with {len(new.files)} new OK image(s) (not trained from scratch)")
        return model

    @staticmethod
    def _build(ctx: StepContext, args: TrainArgs, spec: ModelSpec) -> VadModel:
        """The untrained model the plan describes (plan errors for bad weights or devices)."""
        params = args.model_parameters
        try:
            model = build_model(spec, params.pretrained, ctx.plan.resolve(params.backbone_weights))
        except (BackboneError, ValueError) as exc:
            raise PlanError(f"plan error: {exc}") from None
        model.to(resolve_device(args.accelerator))
        ctx.logger.info(
            f"{spec.model_name}: backbone {spec.backbone} {spec.layers} ({model.weights_source}), "
            f"input {spec.input_size[0]}x{spec.input_size[1]}, on {model.device}"
        )
        return model

    def _fit_ood_check(
        self, ctx: StepContext, model: VadModel, train: FitData, valid: FitData, args: TrainArgs, described: OodInputs
    ) -> None:
        """Fit the out-of-distribution check on the OK images and save it with the model (before any export).

        The descriptors come from the passes the fit and the validation scoring made where they can; an update
        adds its new images' to those its model's check was fitted on. Where none can, a pass describes the images.
        """
        fitted = described.fitted
        base = self._base_folder(ctx, args)
        if described.incremental and base is not None:
            check = OodCheck.load(base)
            kept = check.descriptors if check is not None else None
            if kept is None:  # a check saved without its descriptors: described again below
                fitted = None
            elif fitted is not None:
                fitted = np.concatenate([kept, fitted])
            else:
                fitted = kept
        if fitted is None:
            chosen = [train.files[i] for i in evenly_spaced(len(train.files))]
            fitted = describe_files(model.describe, chosen, model.spec, args.batch_size)
        ok = ~valid.is_ng
        validation = described.validation
        if validation is None or len(validation) != len(valid.files):
            ok_files = [file for file, keep in zip(valid.files, ok, strict=True) if keep]
            validation = describe_files(model.describe, ok_files, model.spec, args.batch_size)
        else:
            validation = validation[ok]
        check = OodCheck.fit(capped(fitted), validation if len(validation) else None, args.experiment_seed)
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
