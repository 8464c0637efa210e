"""``main.py --mode tune``: an Optuna study over the plan's ``tuning:`` space, judged on the user's own images.

Each trial trains the plan with the trial's train args on every resample (:mod:`.resample`: the plan's own
split first, then stratified re-splits of the labelled images) in its own folder under ``tuning/`` (exports
and heatmaps off, tracking off: the study tracks the trial), and scores the mean validation metric. The trials
share a memo of backbone features and coreset picks (:mod:`vad.models.feature_cache`): each image's
features are extracted once per backbone and input size, whatever the trial or the resample. FastFlow
reports its per-epoch validation metric on the first resample, so that hopeless trials are pruned. The study
is stored in ``tuning/study.db`` (SQLite): an interrupted tune resumes where it stopped.

The choice: the best mean, unless other trials lie within one standard error of it; then the user's own
plan when it is among them (ties go to the default), else the fastest of them (validation images/s). The
end writes ``{plan}.tuned-{UTC}.yaml`` beside the plan (the diff is printed), ``tuning/{study}/trials.csv``
and a table of the trials; the user's plan is never edited.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alo.errors import DataError
from alo.plan import Plan, load_plan
from vad.models import epochs, feature_cache
from vad.plan_edit import Change, apply_changes, write_copy
from vad.tuning.resample import SPLIT_COLUMN, labelled_data, write_resamples
from vad.tuning.space import MIN_NG, Dimension, Tuning, current_value, parse_tuning, train_values

logger = logging.getLogger("assets.tune")

STUDY_FOLDER = "tuning"


@dataclass(frozen=True)
class TrialResult:
    """One finished trial."""

    number: int
    state: str
    values: dict[str, Any]
    mean: float
    std: float
    per_resample: list[float]
    images_per_s: float
    default: bool


def _train_step_args(plan: Plan, name: str) -> dict[str, Any]:
    steps = {step.name: step.args for step in plan.pipelines.get("train", [])}
    return dict(steps.get(name) or {})


def _study_name(plan: Plan, tuning: Tuning, train_args: dict[str, Any]) -> str:
    """A name that changes with what the trials measure, not with the budget (more trials resume the study)."""
    what = {
        "space": [d.__dict__ for d in tuning.dimensions],
        "objective": tuning.objective,
        "resamples": tuning.resamples,
        "seed": tuning.seed,
        "train": train_args,
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{plan.name}-{digest}"


def _stored(choice: Any) -> Any:
    """A categorical choice as Optuna stores it: lists and maps as JSON text (Optuna keeps only scalars)."""
    return json.dumps(choice) if isinstance(choice, list | dict) else choice


def _choice(dimension: Dimension, stored: Any) -> Any:
    """The value behind a stored parameter (the choice it stands for, for a categorical dimension)."""
    if dimension.choices is None:
        return stored
    return dimension.choices[[_stored(c) for c in dimension.choices].index(stored)]


def _suggest(trial: Any, dimension: Dimension) -> Any:
    if dimension.choices is not None:
        picked = trial.suggest_categorical(dimension.key, [_stored(c) for c in dimension.choices])
        return _choice(dimension, picked)
    if dimension.integer:
        step = int(dimension.step or 1)
        return trial.suggest_int(dimension.key, int(dimension.low), int(dimension.high), step=step, log=dimension.log)
    return trial.suggest_float(dimension.key, dimension.low, dimension.high, step=dimension.step, log=dimension.log)


def _default_values(tuning: Tuning, train_args: dict[str, Any]) -> dict[str, Any] | None:
    """The plan's own values of the searched args, or None where one lies outside the space."""
    values = {}
    for dimension in tuning.dimensions:
        current = current_value(dimension.key, train_args)
        if dimension.choices is not None:
            if current not in dimension.choices:
                return None
            values[dimension.key] = _stored(current)
        elif current is None or not dimension.low <= float(current) <= dimension.high:
            return None
        else:
            values[dimension.key] = current
    return values


def _trial_plan(plan: Plan, folder: Path, data: Path, changes: dict[str, Any]) -> Path:
    """The plan for one fit of a trial: the user's plan with the trial's train args, in its own folder.

    It starts from the loaded plan's own normalised form (:meth:`Plan.as_run`: one args map per step, whatever
    layout the file uses), so every train arg the user wrote is kept.
    """
    raw = deepcopy(plan.as_run())
    raw.pop("tuning", None)
    raw["external_path"] = [{"load_train_data_path": str(data)}]
    raw["control"] = [{"tracking": False}, {"backup_size": 100}]
    raw["user_parameters"] = [block for block in raw["user_parameters"] if "train_pipeline" in block]
    for block in raw["user_parameters"]:
        for step in block["train_pipeline"]:
            args = step["args"][0]
            if step["step"] == "input":
                args["encoding"] = "utf-8"  # the resample CSVs are written as UTF-8
            if step["step"] == "readiness":
                args["train_validate_column"] = SPLIT_COLUMN
            if step["step"] == "train":
                for key, value in changes.items():
                    args[key] = {**(args.get(key) or {}), **value} if isinstance(value, dict) else value
                args["export"] = []
                args["save_validation_heatmap"] = False
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experimental_plan.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _fit(plan_path: Path, objective: str) -> tuple[float, float]:
    """Train once; the validation metric and the validation images/s."""
    from alo.runner import run

    (final,) = run(plan_path, "train")
    config = json.loads((final / "models" / "train" / "train_config.json").read_text(encoding="utf-8"))
    training = config["training"]
    return float(training["validation"][objective]), float(training.get("validation_images_per_s", float("nan")))


class _EpochReporter:
    """Reports FastFlow's per-epoch validation metric to the trial and prunes hopeless trials."""

    def __init__(self, trial: Any, objective: str) -> None:
        self.trial = trial
        self.key = "image_AUROC" if objective == "auroc" else "image_F1Score"

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        import optuna

        value = metrics.get(self.key)
        if value is None or math.isnan(value):
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            msg = f"pruned at epoch {epoch}: validation {self.key} {value:.4f}"
            raise optuna.TrialPruned(msg)


def run_tune(plan_path: str | Path) -> Path:
    """Run (or resume) the study and write the best plan beside the user's.

    Args:
        plan_path: The user's plan.

    Returns:
        The best plan's path.

    Raises:
        DataError: Too few NG images to judge the trials.
    """
    import optuna

    plan = load_plan(plan_path)
    train_args = _train_step_args(plan, "train")
    tuning = parse_tuning(plan.raw.get("tuning"), train_args)
    data = labelled_data(plan)
    if data.n_ng < MIN_NG[tuning.objective]:
        msg = (
            f"data error: the labelled data has {data.n_ng} NG image(s); judging trials on {tuning.objective} needs "
            f"at least {MIN_NG[tuning.objective]}, or the choice is noise: add defective images to the train CSV"
        )
        raise DataError(msg)
    # the best plan is written after the whole budget: a space the plan copy cannot hold fails now, in one line
    apply_changes(
        plan.path.read_text(encoding="utf-8"),
        [_change(d.key, current_value(d.key, train_args)) for d in tuning.dimensions],
    )
    name = _study_name(plan, tuning, train_args)
    folder = plan.root / STUDY_FOLDER / name
    resamples = write_resamples(data, folder / "data", tuning.resamples, tuning.seed)
    storage = f"sqlite:///{plan.root / STUDY_FOLDER / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=tuning.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        load_if_exists=True,
    )
    _fail_interrupted(study)
    default = _default_values(tuning, train_args)
    if default is not None and not study.trials:
        study.enqueue_trial(default, user_attrs={"default": True})
    done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)  # an interrupted (failed) one reruns
    remaining = None if tuning.n_trials is None else max(0, tuning.n_trials - done)
    logger.info(
        f"tuning study {name}: {done} trial(s) done, {remaining if remaining is not None else 'until the time budget'}"
        f" to run; {len(resamples)} resample(s) of {data.n_ok} OK + {data.n_ng} NG labelled images; "
        f"objective validation {tuning.objective}"
    )
    tracker = _StudyTracking(plan, name)

    def objective(trial: Any) -> float:
        chosen: dict[str, Any] = {}
        for dimension in tuning.dimensions:  # model_name first; a model's own parameters only when it is trained
            model = chosen.get("model_name", current_value("model_name", train_args))
            if dimension.model is None or dimension.model == model:
                chosen[dimension.key] = _suggest(trial, dimension)
        changes = train_values(tuning.dimensions, chosen)
        values, speeds = [], []
        reporter = _EpochReporter(trial, tuning.objective)
        try:
            for index, resample in enumerate(resamples):
                trial_plan = _trial_plan(plan, folder / f"trial-{trial.number:03d}" / f"r{index}", resample, changes)
                # the first resample's epochs are reported: a hopeless trial stops there
                with epochs.reporting(reporter) if index == 0 else nullcontext():
                    value, speed = _fit(trial_plan, tuning.objective)
                values.append(value)
                speeds.append(speed)
        except optuna.TrialPruned:
            tracker.trial(trial.number, chosen, None, "PRUNED")
            raise
        mean = statistics.fmean(values)
        trial.set_user_attr("per_resample", values)
        per_s = statistics.fmean(speeds)
        trial.set_user_attr("images_per_s", per_s)
        tracker.trial(trial.number, chosen, {"mean": mean, "values": values, "images_per_s": per_s})
        logger.info(f"trial {trial.number}: {tuning.objective} {mean:.4f} over {len(values)} resample(s) {chosen}")
        return mean

    started = time.perf_counter()
    if remaining != 0:
        with _shared_features(tuning.feature_cache_bytes):
            study.optimize(
                objective, n_trials=remaining, timeout=tuning.timeout_s, gc_after_trial=True, catch=(DataError,)
            )
    results = _results(study, tuning.dimensions)
    step = resolution(tuning.objective, data.n_valid_ok, data.n_ng)
    best = choose(results, step)
    if best is None:
        msg = "data error: no trial finished; see the trials' logs under tuning/"
        raise DataError(msg)
    changes = [_change(d.key, best.values[d.key]) for d in tuning.dimensions if d.key in best.values]
    copy = write_copy(plan.path, changes, "tuned")
    _write_table(results, best, folder / "trials.csv", tuning.objective)
    print(_table(results, best, tuning.objective))
    print(copy.diff or f"(the best plan is the plan itself: {copy.path.name} changes nothing)")
    confidence = _confidence(results, best, tuning.resamples)
    logger.info(
        f"best: trial {best.number} {best.values} ({confidence}; differences under {step:.4f}, the smallest step of "
        f"{tuning.objective} on {data.n_valid_ok} OK + {data.n_ng} NG validation images, count as ties); "
        f"wrote {copy.path}"
    )
    tracker.finish(best, copy.path, time.perf_counter() - started)
    return copy.path


@contextmanager
def _shared_features(max_bytes: int) -> Iterator[None]:
    """The trials' shared memo of backbone features and coreset picks (:mod:`feature_cache`), logged at the end.

    Trials that share a backbone and an input size extract each image's features once; trials that differ only
    in scoring settings also share their coreset. The memo serves only values computed from the same weights and
    the same input bytes, so every trial scores exactly as it would alone.
    """
    if max_bytes <= 0:
        yield
        return
    with feature_cache.enabled(max_bytes) as cache:
        try:
            yield
        finally:
            logger.info(
                f"feature cache: {cache.stats.line()} (limit {max_bytes / 2**20:.0f} MiB); "
                f"coreset picks and search centroids: {cache.results.stats.line()}"
            )


def _fail_interrupted(study: Any) -> None:
    """Trials an interrupted tune left RUNNING are marked failed, so that the budget counts the rest."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)


def _change(key: str, value: Any) -> Change:
    """The plan change for a dimension key (``model_parameters.<key>`` reaches into the nested args)."""
    return Change(("train", "train", *key.split(".")), value)


def _results(study: Any, dimensions: tuple[Dimension, ...]) -> list[TrialResult]:
    by_key = {dimension.key: dimension for dimension in dimensions}
    found = []
    for trial in study.trials:
        values = {key: _choice(by_key[key], value) for key, value in trial.params.items()}
        per = trial.user_attrs.get("per_resample", [])
        found.append(
            TrialResult(
                number=trial.number,
                state=trial.state.name,
                values=values,
                mean=float(trial.value) if trial.value is not None else float("nan"),
                std=statistics.stdev(per) if len(per) > 1 else 0.0,
                per_resample=list(per),
                images_per_s=float(trial.user_attrs.get("images_per_s", float("nan"))),
                default=bool(trial.user_attrs.get("default", False)),
            )
        )
    return found


def resolution(objective: str, n_valid_ok: int, n_ng: int) -> float:
    """The smallest difference of the objective that the validation split can show.

    AUROC moves in steps of one OK/NG pair, ``1 / (n_ok * n_ng)``; F1 by about ``1 / (2 * n_ng)`` when one NG
    image changes side. A smaller difference between two trials is no measured difference.

    Args:
        objective: ``auroc`` or ``f1``.
        n_valid_ok: OK validation images of a split.
        n_ng: NG images (all in validation).

    Returns:
        The step.
    """
    if objective == "auroc":
        return 1.0 / max(1, n_valid_ok * n_ng)
    return 1.0 / max(1, 2 * n_ng)


def choose(results: list[TrialResult], step: float = 0.0) -> TrialResult | None:
    """The chosen trial: best mean; within one standard error of it, the default, else the fastest.

    Args:
        results: Every trial.
        step: The objective's :func:`resolution` on the validation split: the standard error of the best mean is
            never taken below it (two resamples that agree give a standard error of 0).

    Returns:
        The choice, or None when no trial completed.
    """
    complete = [r for r in results if r.state == "COMPLETE" and not math.isnan(r.mean)]
    if not complete:
        return None
    best = max(complete, key=lambda r: r.mean)
    error = best.std / math.sqrt(len(best.per_resample)) if best.per_resample else 0.0
    error = max(error, step)
    tied = [r for r in complete if r.mean >= best.mean - error - 1e-12]
    default = next((r for r in tied if r.default), None)
    if default is not None:
        return default
    return max(tied, key=lambda r: (0.0 if math.isnan(r.images_per_s) else r.images_per_s, r.mean))


def _confidence(results: list[TrialResult], best: TrialResult, resamples: int) -> str:
    default = next((r for r in results if r.default and r.state == "COMPLETE"), None)
    if default is None or default is best:
        return "the plan's own values kept" if default is best else "the plan's own values lie outside the space"
    wins = sum(b > d for b, d in zip(best.per_resample, default.per_resample, strict=False))
    return (
        f"beats the plan's own values on {wins} of {resamples} resample(s), {best.mean - default.mean:+.4f} on average"
    )


def _table(results: list[TrialResult], best: TrialResult, objective: str) -> str:
    lines = [f"{'trial':>5}  {'state':<8} {objective:>8} {'std':>7} {'img/s':>7}  values"]
    for r in results:
        mark = " *" if r is best else ("  (plan)" if r.default else "")
        mean = f"{r.mean:.4f}" if not math.isnan(r.mean) else "-"
        speed = f"{r.images_per_s:.1f}" if not math.isnan(r.images_per_s) else "-"
        lines.append(f"{r.number:>5}  {r.state:<8} {mean:>8} {r.std:>7.4f} {speed:>7}  {r.values}{mark}")
    return "\n".join(lines)


def _write_table(results: list[TrialResult], best: TrialResult, path: Path, objective: str) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", objective, "std", "images_per_s", "default", "chosen", "values"])
        for r in results:
            writer.writerow(
                [r.number, r.state, r.mean, r.std, r.images_per_s, r.default, r is best, json.dumps(r.values)]
            )


class _StudyTracking:
    """The study as an MLflow run with one nested run per trial (one WARNING and nothing more on failure)."""

    def __init__(self, plan: Plan, name: str) -> None:
        from alo.tracking import settings_of

        self.settings = settings_of(plan)
        self.name = name
        self.parent: str | None = None
        self.mlflow: Any = None
        if not self.settings.enabled:
            return
        try:
            from alo.tracking import open_store

            mlflow, _, experiment_id = open_store(self.settings)
            mlflow.set_experiment(experiment_id=experiment_id)
            run = mlflow.start_run(run_name=f"tune {name}", tags={"pipeline": "tune", "study": name})
            self.parent = run.info.run_id
            self.mlflow = mlflow
        except Exception as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        logger.warning(f"tracking skipped ({exc.__class__.__name__}: {str(exc)[:160]}); the tune goes on")
        self.mlflow = None

    def trial(
        self, number: int, values: dict[str, Any], result: dict[str, Any] | None, state: str = "COMPLETE"
    ) -> None:
        """Log one trial as a nested run."""
        if self.mlflow is None:
            return
        try:
            with self.mlflow.start_run(
                run_name=f"trial {number}", nested=True, tags={"state": state, "trial": str(number)}
            ):
                self.mlflow.log_params({k: str(v) for k, v in values.items()})
                if result is not None:
                    self.mlflow.log_metric("objective", result["mean"])
                    self.mlflow.log_metric("images_per_s", result["images_per_s"])
                    for step, value in enumerate(result["values"]):
                        self.mlflow.log_metric("objective_per_resample", value, step=step)
        except Exception as exc:
            self._warn(exc)

    def finish(self, best: TrialResult, path: Path, seconds: float) -> None:
        """Close the study's run with the choice."""
        if self.mlflow is None:
            return
        try:
            self.mlflow.log_params({f"best.{k}": str(v) for k, v in best.values.items()})
            self.mlflow.log_metrics({"best_objective": best.mean, "best_trial": best.number, "seconds": seconds})
            self.mlflow.log_artifact(str(path), "plan")
            self.mlflow.end_run()
        except Exception as exc:
            self._warn(exc)
