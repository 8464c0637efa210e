"""The runner: validate the plan, then run each pipeline's steps in plan order.

Everything a run writes goes to a staging folder; it becomes ``{pipeline}_artifacts/`` only when
every step succeeded (see :mod:`alo.artifacts`). A failed run is kept in history with its logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import logging
import shutil
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import yaml

from alo.archive import extract_archive, make_archive
from alo.args import StepArgs, validate_args
from alo.artifacts import ArtifactStore, project_lock
from alo.asset import Asset, DeferredFile, DeferredWork, StepContext, load_asset
from alo.background import BackgroundFiles
from alo.errors import DataError, ModelError, PlanError
from alo.history import hash_code, hash_files, hash_object, new_run_id, write_record
from alo.logs import FILE_ONLY, FRAMEWORK_LOGGER, PIPELINE_LOGGER, log_files
from alo.plan import PIPELINES, Plan, load_plan
from alo.tracking import Tracker, start_logger
from alo.tracking import settings_of as tracking_settings

logger = logging.getLogger(f"{FRAMEWORK_LOGGER}.runner")
MODEL_RECORD = "train_run.json"
MODEL_ARCHIVE = "model.tar.gz"


@dataclass(frozen=True)
class PreparedStep:
    """A plan step resolved to its class, with validated arguments."""

    name: str
    asset: type[Asset]
    args: StepArgs


@dataclass(frozen=True)
class ResidentRun:
    """How a resident process (the edge loop) runs a request's pipeline, unlike a one-shot run.

    Attributes:
        tracked: Log the run to MLflow as a run of its own (the loop tracks its session as one run instead).
        history_keep: Most runs of the pipeline kept in ``history/`` (oldest pruned first), beside
            ``backup_size``; None: ``backup_size`` only.
        background: Writes the run's sheddable files (heatmap pictures) into the promoted run off the answer's
            path, and deletes the runs ``history_keep`` prunes; None: both before the run ends, as in a one-shot
            run. Not used for a run that
            archives its artifacts (``save_inference_artifacts_path``: the archive holds them all) nor one whose
            replaced artifacts are not kept (``backup_artifacts: false``).
    """

    tracked: bool = True
    history_keep: int | None = None
    background: BackgroundFiles | None = None


def prepare(plan: Plan, pipeline: str, package: str) -> list[PreparedStep]:
    """Resolve and validate the steps of one pipeline before anything runs.

    Args:
        plan: The loaded plan.
        pipeline: ``train`` or ``inference``.
        package: The solution package holding the steps.

    Returns:
        The steps in plan order.

    Raises:
        PlanError: The pipeline is missing, a step is unknown or an argument is invalid.
    """
    if pipeline not in plan.pipelines:
        msg = f"plan error: the plan has no '{pipeline}_pipeline' under user_parameters; add it or pick another --mode"
        raise PlanError(msg)
    steps = []
    for step in plan.pipelines[pipeline]:
        asset = load_asset(package, step.name, step.where.removesuffix(".args"))
        args = validate_args(asset.arguments(pipeline), step.args, step.where)
        steps.append(PreparedStep(step.name, asset, args))
    return steps


def data_path_of(plan: Plan, pipeline: str) -> Path:
    """The pipeline's input data: the plan's ``load_{pipeline}_data_path`` folder (inference: or one image).

    Args:
        plan: The plan.
        pipeline: ``train`` or ``inference``.

    Returns:
        The path.

    Raises:
        PlanError: The key is empty.
        DataError: The path is no folder (nor, for inference, a file).
    """
    key = f"load_{pipeline}_data_path"
    path = plan.resolve(getattr(plan.external_path, key))
    if path is None:
        msg = f"plan error: 'external_path.{key}' is empty; set it to the folder holding your {pipeline} images"
        raise PlanError(msg)
    if pipeline == "inference" and path.is_file():  # one image: the input step checks that it is one
        return path
    if not path.is_dir():
        msg = f"data error: {key} {path} is not an existing folder; create it or fix the path in the plan"
        raise DataError(msg)
    return path


def model_dir_of(plan: Plan, workdir: Path) -> Path:
    """Find the trained models for inference: ``load_model_path`` or ``train_artifacts/models``.

    Args:
        plan: The plan.
        workdir: Where a ``model.tar.gz`` is extracted.

    Returns:
        The ``models`` folder.

    Raises:
        ModelError: No trained model there.
    """
    source = plan.resolve(plan.external_path.load_model_path)
    if source is None:
        models = plan.root / "train_artifacts" / "models"
        if not models.is_dir():
            msg = f"model error: no trained model in {models}; run 'main.py --mode train' first or set load_model_path"
            raise ModelError(msg)
        return _checked_models(models, models)
    if source.is_dir() and (source / MODEL_ARCHIVE).is_file():
        source = source / MODEL_ARCHIVE
    if source.is_dir():
        return _checked_models(source / "models" if (source / "models").is_dir() else source, source)
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        return _checked_models(extract_archive(source, workdir), source)
    msg = f"model error: load_model_path {source} is neither a model.tar.gz nor a folder holding one; fix the path"
    raise ModelError(msg)


def _checked_models(models: Path, source: Path) -> Path:
    """Refuse a model folder that no train run wrote (every train run leaves its record there)."""
    if not (models / MODEL_RECORD).is_file():
        msg = (
            f"model error: {source} holds no trained model (no {MODEL_RECORD}); point load_model_path at a "
            f"{MODEL_ARCHIVE} or train_artifacts folder written by 'main.py --mode train', or train again"
        )
        raise ModelError(msg)
    return models


def _input_files(path: Path | None) -> list[Path]:
    if path is None:
        return []
    if path.is_file():
        return [path]
    return [p for p in path.rglob("*") if p.is_file()]


def run_pipeline(
    plan: Plan,
    pipeline: str,
    steps: list[PreparedStep],
    package: str,
    resident_model: Path | None = None,
    answer: Callable[[Path], None] | None = None,
    tracking_jobs: list[Path] | None = None,
    reporter: str | None = None,
    resident: ResidentRun | None = None,
) -> Path:
    """Run one pipeline and promote its artifacts.

    Args:
        plan: The plan.
        pipeline: ``train`` or ``inference``.
        steps: The prepared steps.
        package: The solution package (its code is hashed into the record).
        resident_model: For inference, a ``models`` folder already found (and extracted) by a resident
            process; else the plan's ``load_model_path`` or ``train_artifacts/models`` is looked up.
        answer: Called with the staging folder once every step has succeeded, before the steps' deferred
            writes and the promotion (the edge loop answers with the summary there, as ALO does).
        tracking_jobs: Where a one-shot process collects its runs' tracking jobs, to start one logger for all
            (:func:`alo.tracking.start_logger`); None: this run's logger starts when it ends.
        reporter: The tracking plugin, a module with ``report`` and ``log_model`` (:class:`alo.tracking.Tracker`);
            None: runs are tracked with their record and parameters only.
        resident: How a resident process's request run differs (see :class:`ResidentRun`); None: a one-shot run.

    Returns:
        The promoted artifacts folder.
    """
    options = resident or ResidentRun()
    run_id = new_run_id(plan.name)
    store = ArtifactStore(plan.root, pipeline, run_id)
    staging = store.begin()
    model_work = store.internal / "staging" / f"{pipeline}-{run_id}.model"
    record: dict[str, object] = {
        "id": run_id,
        "pipeline": pipeline,
        "plan": str(plan.path),
        "name": plan.name,
        "version": plan.version,
        "start_time": datetime.now(UTC).isoformat(),
    }
    failed = True
    settings = tracking_settings(plan)
    if not options.tracked:
        settings = dataclasses.replace(settings, enabled=False)
    tracker = Tracker(settings, reporter, resident=resident_model is not None)
    background = _background_of(plan, pipeline, options)
    remove = options.background.remove if options.background is not None else None  # pruned runs deleted there
    sheddable: list[DeferredFile] = []
    params = {step.name: step.args.model_dump(mode="json") for step in steps}
    with log_files(staging / "log"):
        try:
            logger.info(f"{pipeline} pipeline {run_id} started ({len(steps)} steps)")
            data_path = data_path_of(plan, pipeline)
            if pipeline == "train":
                model_dir = staging / "models"
            else:
                model_dir = resident_model or model_dir_of(plan, model_work)
                record["train_id"] = train_id_of(model_dir)
            record["data_id"] = hash_files(_input_files(data_path), data_path)
            record["param_id"] = hash_object({s.name: s.args.model_dump(mode="json") for s in steps})
            record["code_id"] = _code_id(package)
            data: dict[str, object] = {}
            config: dict[str, object] = {}
            deferred = DeferredWork()
            deferred.background = background is not None
            for step in steps:
                ctx = StepContext(
                    pipeline=pipeline,
                    step=step.name,
                    args=step.args,
                    run_id=run_id,
                    plan=plan,
                    artifacts=staging,
                    data_path=data_path,
                    model_dir=model_dir,
                    logger=logging.getLogger(f"{PIPELINE_LOGGER}.{step.name}"),
                    deferred=deferred,
                )
                started = time.perf_counter()
                logger.info(f"step '{step.name}' started")
                data, config = _run_step(step, ctx, data, config)
                logger.info(f"step '{step.name}' finished in {time.perf_counter() - started:.1f}s")
            if answer is not None:
                answer(staging)
            _keep_plan(plan, staging / "log" / "experimental_plan.yaml")  # for the record only: after the answer
            sheddable = deferred.take_files() if background is not None else []
            if deferred:
                started = time.perf_counter()
                count = len(deferred)
                deferred.run()
                logger.debug(f"{count} deferred write(s) done in {time.perf_counter() - started:.3f}s")
            if pipeline == "train":
                write_record(model_dir / MODEL_RECORD, {"train_id": run_id, "name": plan.name, "version": plan.version})
            failed = False
        except BaseException as exc:
            record["error"] = f"{exc.__class__.__name__}: {exc}"
            logger.error(f"{pipeline} pipeline failed: {exc.__class__.__name__}: {exc}", extra=FILE_ONLY)
            logger.debug(traceback.format_exc())
            raise
        finally:
            plan_copy = staging / "log" / "experimental_plan.yaml"
            if failed and plan_copy.parent.is_dir() and not plan_copy.exists():
                with contextlib.suppress(OSError):  # never hides the run's own error
                    _keep_plan(plan, plan_copy)
            record["end_time"] = datetime.now(UTC).isoformat()
            record["status"] = "error" if failed else "success"
            write_record(staging / "log" / "experimental_history.json", record)
            shutil.rmtree(model_work, ignore_errors=True)
            if failed:
                kept = store.fail(plan.control.backup_size, options.history_keep, remove)
                if kept is not None:
                    logger.info(f"failed run kept in {kept}; the previous {pipeline}_artifacts are unchanged")
                tracker.finish(record, kept or staging, params, tracking_jobs)
    final = store.promote(plan.control.backup_artifacts, plan.control.backup_size, options.history_keep, remove)
    if background is not None and sheddable:
        background.submit(final, [(PurePosixPath(f.path.relative_to(staging).as_posix()), f) for f in sheddable])
    logger.info(f"{pipeline} pipeline {run_id} succeeded: artifacts in {final}")
    _save_archives(plan, pipeline, final)
    tracker.finish(record, final, params, tracking_jobs)
    return final


def _background_of(plan: Plan, pipeline: str, options: ResidentRun) -> BackgroundFiles | None:
    """The background writer a run's sheddable files go to, or None: written before promotion."""
    if options.background is None or not plan.control.backup_artifacts:  # a replaced run would be deleted
        return None
    if plan.resolve(getattr(plan.external_path, f"save_{pipeline}_artifacts_path")) is not None:
        return None  # the archive, written at promotion, holds every file
    return options.background


# The plan-as-run texts already written, by the plan's values: the edge loop applies each request's metadata to
# the plan, usually with the same values but another image path, and renders its YAML once (1.8 ms a request).
_PLAN_TEXTS: OrderedDict[str, str] = OrderedDict()
PLAN_TEXTS_KEPT = 32
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _keep_plan(plan: Plan, target: Path) -> None:
    """A run's copy of its plan: the file itself, or, when something changed the plan, the plan as it runs."""
    if plan.changed_by is None:
        shutil.copyfile(plan.path, target)
        return
    written = plan.as_run()
    key = json.dumps([str(plan.path), plan.changed_by, written], default=repr)
    text = _PLAN_TEXTS.pop(key, None)
    if text is None:
        head = f"# {plan.path} as this run used it: {plan.changed_by} applied\n"
        text = head + yaml.dump(written, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)
        while len(_PLAN_TEXTS) >= PLAN_TEXTS_KEPT:
            _PLAN_TEXTS.popitem(last=False)
    _PLAN_TEXTS[key] = text  # most recently used last
    target.write_text(text, encoding="utf-8")


@functools.cache
def _code_id(package: str) -> str:
    """The hash of the solution's sources, once per process: the code that runs is the code loaded.

    The solution package's own sources, and those of the packages it names in ``CODE_PACKAGES`` (the library its
    steps adapt), in that order.
    """
    module = importlib.import_module(package)
    names = [package, *getattr(module, "CODE_PACKAGES", ())]
    ids = [hash_code(Path(importlib.import_module(name).__path__[0])) for name in names]
    return ids[0] if len(ids) == 1 else hash_object(ids)


def train_id_of(model_dir: Path) -> str | None:
    """The id of the train run that wrote a models folder (None when unknown)."""
    try:
        return json.loads((model_dir / MODEL_RECORD).read_text(encoding="utf-8")).get("train_id")
    except (OSError, ValueError):
        return None


def _run_step(step: PreparedStep, ctx: StepContext, data: dict, config: dict) -> tuple[dict, dict]:
    before_data, before_config = set(data), set(config)
    result = step.asset().run(ctx, data, config)
    if not (isinstance(result, tuple) and len(result) == 2):
        msg = f"step '{step.name}' must return (data, config), got {type(result).__name__}"
        raise TypeError(msg)
    new_data, new_config = result
    lost = (before_data - set(new_data)) | (before_config - set(new_config))
    if lost:
        msg = f"step '{step.name}' removed keys {sorted(lost)}; steps may add keys, never remove them"
        raise RuntimeError(msg)
    return new_data, new_config


def _save_archives(plan: Plan, pipeline: str, final: Path) -> None:
    destination = plan.resolve(getattr(plan.external_path, f"save_{pipeline}_artifacts_path"))
    if destination is None:
        return
    make_archive(final, destination / f"{pipeline}_artifacts.tar.gz")
    if pipeline == "train":
        make_archive(final / "models", destination / MODEL_ARCHIVE)
    logger.info(f"{pipeline} archives written to {destination}")


def run(plan_path: str | Path, mode: str = "all", package: str = "assets", reporter: str | None = None) -> list[Path]:
    """Run the pipelines a mode asks for.

    Args:
        plan_path: The plan file.
        mode: ``train``, ``inference`` or ``all`` (train, then inference).
        package: The solution package holding the steps.
        reporter: The tracking plugin (see :func:`run_pipeline`).

    Returns:
        The promoted artifact folders, in run order.
    """
    plan = load_plan(plan_path)
    pipelines = list(PIPELINES) if mode == "all" else [mode]
    prepared = {pipeline: prepare(plan, pipeline, package) for pipeline in pipelines}
    jobs: list[Path] = []
    try:
        with project_lock(plan.root):
            return [
                run_pipeline(plan, name, prepared[name], package, tracking_jobs=jobs, reporter=reporter)
                for name in pipelines
            ]
    finally:
        start_logger(jobs)  # one logger for every run of this process, failed ones too
