"""Loading and validating ``experimental_plan.yaml`` (the ALO plan shape).

The plan keeps ALO's layout: ``external_path`` and ``control`` are lists of one-key maps,
``user_parameters`` holds ``train_pipeline`` / ``inference_pipeline`` lists of
``{step, args: [ {...} ]}``. Plain maps are accepted wherever ALO uses a list of one-key maps.
Step arguments are validated later against each step's own model (see ``alo.runner``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alo.args import suggest, validate_args
from alo.errors import PlanError

PIPELINES = ("train", "inference")
_IGNORED_TOP_LEVEL = {"asset_source", "external_path_permission", "ui_args_detail"}
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ExternalPaths(BaseModel):
    """Data and artifact locations; relative paths are resolved against the plan's folder."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    load_train_data_path: str | None = None
    load_inference_data_path: str | None = None
    save_train_artifacts_path: str | None = None
    save_inference_artifacts_path: str | None = None
    load_model_path: str | None = None


class Control(BaseModel):
    """Framework behaviour; unknown ALO control keys are refused, known-but-inert ones accepted."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    backup_artifacts: bool = True
    backup_size: int = Field(default=1000, ge=1, description="history size cap in MB")
    review_size_mb: int = Field(default=200, ge=0, description="review/ size cap in MB; 0 keeps no images to review")
    get_asset_source: str = "once"
    backup_log: bool = True
    interface_mode: str = "memory"
    save_inference_format: str = "tar.gz"
    check_resource: bool = False
    tracking: bool = True  # every run logged to MLflow (alo/tracking/); false: nothing written
    tracking_uri: str | None = None  # default: the SQLite store in mlruns/ beside the plan
    tracking_experiment: str | None = None  # default: the plan's name
    loop_history_keep: int = Field(default=100, ge=1, description="request runs the edge loop keeps in history")
    loop_metrics_every: int = Field(default=100, ge=1, description="requests between the loop's tracked metrics")
    drift_window: int = Field(default=200, ge=10, description="recent images the drift statistic compares")
    drift_limit: float = Field(default=0.3, gt=0, le=1, description="KS statistic from which the scores have drifted")


@dataclass(frozen=True)
class StepPlan:
    """One step of a pipeline as written in the plan (arguments not yet validated)."""

    name: str
    args: dict[str, Any]
    where: str


@dataclass(frozen=True)
class Plan:
    """A loaded, structurally valid plan."""

    path: Path
    name: str
    version: str
    external_path: ExternalPaths
    control: Control
    pipelines: dict[str, list[StepPlan]]
    raw: dict[str, Any] = field(repr=False)
    changed_by: str | None = None  # what changed it after it was read (ALO solution metadata), if anything

    def as_run(self) -> dict[str, Any]:
        """The plan in its file's shape with the values it runs with (the file's own when nothing changed it).

        Returns:
            A mapping for ``yaml.safe_dump``: name, version, paths and every step's arguments as this plan has them.
        """
        written = {key: value for key, value in self.raw.items() if key not in ("external_path", "user_parameters")}
        written.update(name=self.name, version=self.version)
        written["external_path"] = [{key: value} for key, value in self.external_path.model_dump().items()]
        written["user_parameters"] = [
            {f"{name}_pipeline": [{"step": step.name, "args": [dict(step.args)]} for step in steps]}
            for name, steps in self.pipelines.items()
        ]
        return written

    @property
    def root(self) -> Path:
        """The plan's folder: relative paths and the artifact folders live under it."""
        return self.path.parent

    def resolve(self, value: str | None) -> Path | None:
        """Resolve a path from the plan relative to the plan's folder.

        Args:
            value: The path as written, or None.

        Returns:
            An absolute path, or None when the value is empty.
        """
        if value is None or str(value).strip() == "":
            return None
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else (self.root / path).resolve()


def _one_key_maps(value: Any, where: str) -> dict[str, Any]:
    """Merge ALO's list of one-key maps (or a plain map) into one map."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, list):
        msg = f"plan error: '{where}' must be a list of one-key maps (e.g. '- key: value'), got {value!r}"
        raise PlanError(msg)
    merged: dict[str, Any] = {}
    for item in value:
        if item is None:
            continue
        if not isinstance(item, dict):
            msg = f"plan error: '{where}' entries must be 'key: value' maps, got {item!r}"
            raise PlanError(msg)
        for key, val in item.items():
            if key in merged:
                msg = f"plan error: '{where}.{key}' is given twice; keep one"
                raise PlanError(msg)
            merged[key] = val
    return merged


def _parse_steps(value: Any, where: str) -> list[StepPlan]:
    if not isinstance(value, list) or not value:
        msg = f"plan error: '{where}' must be a non-empty list of steps ('- step: input')"
        raise PlanError(msg)
    steps: list[StepPlan] = []
    for index, item in enumerate(value):
        here = f"{where}[{index}]"
        if not isinstance(item, dict) or "step" not in item:
            msg = f"plan error: '{here}' must be a map with a 'step' key, got {item!r}"
            raise PlanError(msg)
        unknown = set(item) - {"step", "args", "ui_args"}
        if unknown:
            key = sorted(unknown)[0]
            msg = f"plan error: unknown key '{here}.{key}'{suggest(key, ['step', 'args'])}; allowed: step, args"
            raise PlanError(msg)
        name = item["step"]
        if not isinstance(name, str) or not name:
            msg = f"plan error: '{here}.step' must be a step name, got {name!r}"
            raise PlanError(msg)
        if name in [step.name for step in steps]:
            msg = f"plan error: step '{name}' appears twice in '{where}'; keep one"
            raise PlanError(msg)
        args = _one_key_maps(item.get("args"), f"{here}.args")
        steps.append(StepPlan(name=name, args=args, where=f"{where}.{name}.args"))
    return steps


def parse_plan(raw: Any, path: Path) -> Plan:
    """Validate the structure of a parsed plan.

    Args:
        raw: The object ``yaml.safe_load`` returned.
        path: The plan file (its folder anchors relative paths).

    Returns:
        The plan, with step arguments still raw.

    Raises:
        PlanError: On any structural problem.
    """
    if not isinstance(raw, dict):
        msg = f"plan error: {path} must be a YAML map with name, version, external_path and user_parameters"
        raise PlanError(msg)
    known = {"name", "version", "external_path", "user_parameters", "control", "tuning"} | _IGNORED_TOP_LEVEL
    for key in raw:
        if key not in known:
            allowed = ", ".join(sorted(known))
            msg = f"plan error: unknown top-level key '{key}'{suggest(str(key), known)}; allowed: {allowed}"
            raise PlanError(msg)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        msg = f"plan error: 'name' is {name!r}; use 1-64 letters, digits, '_', '.' or '-' (e.g. name: vad)"
        raise PlanError(msg)
    version = raw.get("version", "1.0.0")
    if not isinstance(version, str | int | float):
        msg = f"plan error: 'version' is {version!r}; use a string such as '1.0.0'"
        raise PlanError(msg)
    external = validate_args(ExternalPaths, _one_key_maps(raw.get("external_path"), "external_path"), "external_path")
    control = validate_args(Control, _one_key_maps(raw.get("control"), "control"), "control")
    params = _one_key_maps(raw.get("user_parameters"), "user_parameters")
    pipelines: dict[str, list[StepPlan]] = {}
    for key, value in params.items():
        pipeline = key.removesuffix("_pipeline")
        if pipeline not in PIPELINES or not key.endswith("_pipeline"):
            pipeline_keys = [f"{p}_pipeline" for p in PIPELINES]
            hint = suggest(key, pipeline_keys)
            msg = f"plan error: unknown key 'user_parameters.{key}'{hint}; allowed: {', '.join(pipeline_keys)}"
            raise PlanError(msg)
        pipelines[pipeline] = _parse_steps(value, f"user_parameters.{key}")
    if not pipelines:
        msg = "plan error: 'user_parameters' has no train_pipeline or inference_pipeline; add at least one"
        raise PlanError(msg)
    return Plan(
        path=path,
        name=name,
        version=str(version),
        external_path=external,
        control=control,
        pipelines=pipelines,
        raw=raw,
    )


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file with a safe YAML loader.

    Args:
        path: Path of ``experimental_plan.yaml``.

    Returns:
        The structurally valid plan.

    Raises:
        PlanError: The file is missing, not YAML, or malformed.
    """
    plan_path = Path(path).expanduser().resolve()
    if not plan_path.is_file():
        msg = f"plan error: plan file {plan_path} not found; pass an existing file with --config"
        raise PlanError(msg)
    try:
        text = plan_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"plan error: cannot read {plan_path} as UTF-8 text ({exc.__class__.__name__}); save it as UTF-8 YAML"
        raise PlanError(msg) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        msg = f"plan error: {plan_path.name} is not valid YAML{where}: {problem}; fix the indentation or quoting"
        raise PlanError(msg) from None
    if raw is None:
        msg = f"plan error: {plan_path} is empty; start from the default experimental_plan.yaml"
        raise PlanError(msg)
    try:
        return parse_plan(raw, plan_path)
    except ValidationError as exc:  # pragma: no cover - validate_args converts these
        raise PlanError(str(exc)) from None
