"""Readiness step: check the ground truth, pick the OK class, split train/valid, choose the threshold method.

Bad rows (empty cells, missing or non-image files, duplicates) are skipped with a warning that
counts and names them; a run that could not be meaningful (no OK image to fit) stops.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from alo import Asset, Config, Data, DataError, ModelError, StepArgs, StepContext
from alo.args import suggest
from vad.images import IMAGE_EXTENSIONS, probe_image
from vad.samples import FILE, GENERATED_PATH_COLUMN, IS_NG, LABEL, MASK, SPLIT, TRAIN, VALID
from vad.threshold_policy import MethodName, ThresholdPolicy, method

READINESS_FILE = "readiness_config.json"
SPLIT_SEED = 42
# The OK and NG names travel to the train step in memory; on disk only the model's calibration.json holds them.
NAMES_IN_CALIBRATION = ("ok_class", "ng_name")
MIN_OK_TRAIN = 3  # fewer cannot describe "normal": the model would flag every new image


class ReadinessInferenceArgs(StepArgs):
    """Arguments of the readiness step in the inference pipeline: the columns (defaults: the trained ones)."""

    y_column: str = "label"
    path_column: str = "image_path"
    mask_column: str = "mask_path"


class ReadinessArgs(ReadinessInferenceArgs):
    """Arguments of the readiness step in the train pipeline (reference guide defaults)."""

    ok_class: str = ""
    train_validate_column: str = ""
    validation_split_rate: float = Field(default=0.1, ge=0.0, lt=1.0)
    threshold_method: MethodName = "F1"
    num_minor_threshold: int = Field(default=5, ge=0)
    ratio_minor_threshold: float = Field(default=0.1, ge=0.0, le=1.0)


def attach_masks(samples: pd.DataFrame, column: str, data_dir: Path, ctx: StepContext) -> pd.DataFrame:
    """Add ``_mask`` (absolute mask path, '' for none) when the CSV has a mask column.

    Masks enable pixel metrics. An NG row without a usable mask is left out of them (warned when the file is missing).

    Args:
        samples: Usable rows.
        column: The mask column name.
        data_dir: Folder mask paths are relative to.
        ctx: Run context (for the logger).

    Returns:
        The rows, with ``_mask`` when the column exists.
    """
    if column not in samples.columns:
        return samples
    root = data_dir.resolve()
    cells = samples[column].astype("string").str.strip().fillna("")
    paths = ["" if not cell else str((root / cell).resolve()) for cell in cells]
    lost = [cell for cell, path in zip(cells, paths, strict=True) if path and not Path(path).is_file()]
    if lost:
        ctx.logger.warning(f"{len(lost)} mask file(s) not found, treated as unknown: {_names(lost)}")
    samples = samples.copy()
    samples[MASK] = [path if path and Path(path).is_file() else "" for path in paths]
    ctx.logger.info(f"mask column '{column}': {sum(bool(p) for p in samples[MASK])} mask(s) for pixel metrics")
    return samples


def _require_column(table: pd.DataFrame, column: str, role: str, arg: str) -> None:
    if column not in table.columns:
        columns = [str(c) for c in table.columns]
        msg = (
            f"data error: the CSV has no {role} column '{column}'{suggest(column, columns)} (columns: "
            f"{', '.join(columns)}); rename it or set readiness arg {arg}"
        )
        raise DataError(msg)


def _names(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def clean_rows(
    table: pd.DataFrame, columns: list[str], data_dir: Path, path_column: str, ctx: StepContext
) -> pd.DataFrame:
    """Drop rows that cannot be used, warning with counts and names.

    Args:
        table: The ground truth.
        columns: Columns that must not be empty.
        data_dir: Folder the image paths are relative to.
        path_column: The image path column.
        ctx: Run context (for the logger).

    Returns:
        The usable rows (original index kept), with an added absolute ``_file`` column; the warnings about
        skipped rows are in ``attrs["skipped"]``.
    """
    table = table.copy()
    skipped: list[str] = []

    def skip(reason: str) -> None:
        skipped.append(reason)
        ctx.logger.warning(reason)

    empty = np.zeros(len(table), dtype=bool)
    for column in columns:  # plain lists: a one-image request costs no per-row pandas string machinery
        cells = [None if pd.isna(cell) else str(cell).strip() for cell in table[column].tolist()]
        table[column] = pd.array(cells, dtype="string")
        empty |= np.array([not cell for cell in cells], dtype=bool)
    if empty.any():
        rows = [str(i + 2) for i in table.index[empty]]
        skip(f"skipped {int(empty.sum())} row(s) with an empty {' or '.join(columns)} (CSV lines {_names(rows)})")
        table = table[~empty]
    root = data_dir.resolve()
    table[FILE] = [str((root / p).resolve()) for p in table[path_column]]

    def drop(bad: np.ndarray, what: str) -> pd.DataFrame:
        """The rows not marked bad, warning about the others (plain arrays: one image costs no pandas work)."""
        if not bad.any():
            return table
        skip(f"skipped {int(bad.sum())} row(s) {what}: {_names(list(table[path_column][bad]))}")
        return table[~bad]

    checks = (
        ("whose paths point outside the data folder", lambda f: not Path(f).is_relative_to(root)),
        ("whose paths point to missing files", lambda f: not Path(f).is_file()),
        (
            f"whose paths are not images ({', '.join(sorted(IMAGE_EXTENSIONS))})",
            lambda f: Path(f).suffix.lower() not in IMAGE_EXTENSIONS,
        ),
        (
            "whose images cannot be decoded (empty, truncated, corrupt or not an image)",
            lambda f: probe_image(f) is not None,
        ),
    )
    for what, is_bad in checks:
        table = drop(np.array([is_bad(f) for f in table[FILE]], dtype=bool), what)
    files = table[FILE].tolist()
    if len(set(files)) < len(files):
        table = drop(table[FILE].duplicated().to_numpy(), "that repeat an earlier row's image (duplicates)")
    table.attrs["skipped"] = skipped
    return table


class ReadinessStep(Asset):
    """Validates the ground truth and decides how training will use it."""

    Args = ReadinessArgs

    @classmethod
    def arguments(cls, pipeline: str) -> type[StepArgs]:
        """Training keys (``ok_class``, the split and threshold settings) are refused in the inference pipeline.

        Args:
            pipeline: ``train`` or ``inference``.

        Returns:
            The argument class.
        """
        return ReadinessArgs if pipeline == "train" else ReadinessInferenceArgs

    def run(self, ctx: StepContext, data: Data, config: Config) -> tuple[Data, Config]:
        """Check, clean and split the data (train) or match it to the trained model (inference).

        Args:
            ctx: Run context.
            data: Needs ``dataframe`` and ``data_dir`` from the input step.
            config: Flowing settings.

        Returns:
            ``data`` with ``samples`` (usable rows with ``_file``, ``_label``, ``_split``, ``_is_ng``);
            ``config`` with ``readiness``.
        """
        if ctx.pipeline == "train":
            return self._train(ctx, data, config)
        return self._inference(ctx, data, config)

    def _train(self, ctx: StepContext, data: Data, config: Config) -> tuple[Data, Config]:
        args = ctx.args_as(ReadinessArgs)
        table: pd.DataFrame = data["dataframe"]
        _require_column(table, args.y_column, "label", "y_column")
        _require_column(table, args.path_column, "image path", "path_column")
        if args.train_validate_column:
            _require_column(table, args.train_validate_column, "train/valid split", "train_validate_column")
        samples = clean_rows(table, [args.y_column, args.path_column], data["data_dir"], args.path_column, ctx)
        if samples.empty:
            msg = "data error: no usable rows left in the CSV (see the warnings above); fix the label/image_path cells"
            raise DataError(msg)
        labels = samples[args.y_column].astype(str)
        counts = labels.value_counts()
        if args.ok_class:
            if args.ok_class not in counts.index:
                found = ", ".join(map(str, counts.index))
                msg = (
                    f"data error: ok_class '{args.ok_class}' is not a label in the CSV"
                    f"{suggest(args.ok_class, list(counts.index))}"
                    f" (labels: {found}); set readiness arg ok_class to one of them"
                )
                raise DataError(msg)
            ok_class = args.ok_class
        else:
            top = counts[counts == counts.max()].index
            ok_class = sorted(map(str, top))[0]
            ctx.logger.info(f"ok_class not set: using the most frequent label '{ok_class}' ({counts.max()} rows)")
        ng_labels = sorted(str(label) for label in counts.index if label != ok_class)
        samples[LABEL] = labels
        samples[IS_NG] = labels != ok_class
        samples[SPLIT] = self._split(samples, args, ctx)
        samples = attach_masks(samples, args.mask_column, data["data_dir"], ctx)
        ok_train = int(((samples[SPLIT] == TRAIN) & ~samples[IS_NG]).sum())
        ok_valid = int(((samples[SPLIT] == VALID) & ~samples[IS_NG]).sum())
        ng_valid = int(((samples[SPLIT] == VALID) & samples[IS_NG]).sum())
        if ok_train == 0:
            msg = (
                f"data error: no '{ok_class}' (OK) image in the train split to learn from; "
                "mark OK rows as 'train' or lower validation_split_rate"
            )
            raise DataError(msg)
        if ok_valid == 0:
            msg = (
                f"data error: no '{ok_class}' (OK) image in the validation split to set the threshold; "
                "mark some OK rows 'valid' or set validation_split_rate above 0"
            )
            raise DataError(msg)
        if ok_train < MIN_OK_TRAIN:
            msg = (
                f"data error: only {ok_train} OK training images ('{ok_class}' rows in the train split); "
                f"at least {MIN_OK_TRAIN} are needed (100+ recommended): add normal images or lower "
                "validation_split_rate"
            )
            raise DataError(msg)
        if ok_train < 10:
            ctx.logger.warning(f"only {ok_train} OK training images: results will be unreliable (100+ recommended)")
        method = self._threshold_method(args, ok_valid, ng_valid, ctx)
        readiness = {
            "y_column": args.y_column,
            "path_column": args.path_column,
            "ok_class": ok_class,
            "ng_labels": ng_labels,
            "ng_name": ng_labels[0] if len(ng_labels) == 1 else ("NG" if ok_class != "NG" else "not_NG"),
            "train_validate_column": args.train_validate_column,
            "threshold_method": method,
            "counts": {"train_ok": ok_train, "valid_ok": ok_valid, "valid_ng": ng_valid},
        }
        path = ctx.model_dir / "readiness" / READINESS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = {key: value for key, value in readiness.items() if key not in NAMES_IN_CALIBRATION}
        path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        ctx.logger.info(
            f"data ready: {ok_train} OK train, {ok_valid} OK + {ng_valid} NG validation; threshold method {method}"
        )
        data["samples"] = samples
        config["readiness"] = readiness
        return data, config

    @staticmethod
    def _split(samples: pd.DataFrame, args: ReadinessArgs, ctx: StepContext) -> pd.Series:
        if args.train_validate_column:
            split = samples[args.train_validate_column].astype("string").str.strip().str.lower()
            unknown = sorted(set(split.dropna()) - {TRAIN, VALID})
            if unknown or split.isna().any():
                shown = ", ".join(repr(u) for u in unknown) or "empty cells"
                msg = (
                    f"data error: column '{args.train_validate_column}' must hold only 'train' or 'valid', found "
                    f"{shown}; fix those cells"
                )
                raise DataError(msg)
            moved = (split == TRAIN) & samples[IS_NG]
            if moved.any():
                ctx.logger.warning(
                    f"{int(moved.sum())} NG row(s) marked 'train' moved to validation (only OK images are fitted)"
                )
                split = split.where(~moved, VALID)
            return split.astype(str)
        split = pd.Series(VALID, index=samples.index, dtype=object)
        ok_index = samples.index[~samples[IS_NG]].to_numpy()
        rng = np.random.default_rng(SPLIT_SEED)
        shuffled = rng.permutation(ok_index)
        n_valid = round(len(shuffled) * args.validation_split_rate)
        if args.validation_split_rate > 0 and len(shuffled) >= 2:
            n_valid = min(max(n_valid, 1), len(shuffled) - 1)
        split.loc[shuffled[n_valid:]] = TRAIN
        ctx.logger.info(
            f"no train_validate_column: {n_valid} of {len(shuffled)} OK images held out for validation "
            f"(validation_split_rate {args.validation_split_rate}), all NG images validate"
        )
        return split.astype(str)

    @staticmethod
    def _threshold_method(args: ReadinessArgs, ok_valid: int, ng_valid: int, ctx: StepContext) -> str:
        policy = ThresholdPolicy(args.threshold_method, args.num_minor_threshold, args.ratio_minor_threshold)
        chosen, reason = policy.choose(ok_valid, ng_valid)
        if reason:
            monitor = method(chosen).forced_monitor
            ctx.logger.warning(
                f"threshold_method {args.threshold_method} -> {chosen}: {reason}"
                + (f"; monitor_metric -> {monitor}" if monitor else "")
            )
        return chosen

    def _inference(self, ctx: StepContext, data: Data, config: Config) -> tuple[Data, Config]:
        args = ctx.args_as(ReadinessInferenceArgs)
        path = ctx.model_dir / "readiness" / READINESS_FILE
        try:
            trained = json.loads(path.read_text(encoding="utf-8"))
            missing = {"path_column", "y_column"} - set(trained)
            if missing:
                raise ValueError(sorted(missing))
        except (OSError, ValueError, TypeError):
            msg = f"model error: {path} is missing or unreadable; train again or point load_model_path at a train run"
            raise ModelError(msg) from None
        table: pd.DataFrame = data["dataframe"]
        path_column = args.path_column if "path_column" in args.model_fields_set else trained["path_column"]
        y_column = args.y_column if "y_column" in args.model_fields_set else trained["y_column"]
        if not config.get("has_csv"):
            path_column = GENERATED_PATH_COLUMN
        _require_column(table, path_column, "image path", "path_column")
        samples = clean_rows(table, [path_column], data["data_dir"], path_column, ctx)
        if samples.empty:
            reasons = "; ".join(samples.attrs.get("skipped", [])) or "see the warnings above"
            msg = f"data error: no usable image rows to score ({reasons}); fix the image paths"
            raise DataError(msg)
        samples = attach_masks(samples, args.mask_column, data["data_dir"], ctx)
        if y_column in samples.columns:  # empty cells stay <NA>: those rows are scored, not measured
            labels = samples[y_column].astype("string").str.strip()
            samples[LABEL] = labels.mask(labels == "")
        ctx.logger.info(f"{len(samples)} image(s) to score")
        data["samples"] = samples
        config["readiness"] = {**trained, "y_column": y_column, "path_column": path_column}
        return data, config


ASSET = ReadinessStep
