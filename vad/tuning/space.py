"""The plan's ``tuning:`` section: the search space over train args, the objective and the budget.

::

    tuning:
      objective: auroc            # auroc | f1 (validation image metric, averaged over the resamples)
      n_trials: 12                # and/or timeout_minutes
      timeout_minutes: 30
      seed: 0                     # the sampler's seed
      resamples: 3                # stratified splits of the labelled images each trial is fitted on
      feature_cache_mb: 4096      # memo of backbone features shared by the trials (0: off)
      space:                      # or: space: auto
        model_name: [patchcore]
        img_size: [256, 320]
        model_parameters.patchcore_backbone: [mobilenetv2_100, tf_efficientnet_lite1]
        model_parameters.patchcore_coreset_sampling_ratio: {low: 0.02, high: 0.2, log: true}
        model_parameters.fastflow_flow_steps: {low: 4, high: 12, step: 2}

A list is a categorical choice, ``{low, high}`` a range (int when both ends are ints; ``step``, ``log``).
Every key is a train arg or ``model_parameters.<key>``, and every value is checked by the train step's own
argument model; a parameter of a model the space never trains is refused. Errors are one line naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alo.args import validate_args
from alo.errors import PlanError
from vad.backbones import BACKBONES
from vad.models import MODELS, model_parameters_class
from vad.train_settings import TrainArgs

# Train args a search may not change: they are the run's plumbing, not the model.
FIXED = {"accelerator", "export", "precision", "save_validation_heatmap", "experiment_seed"}
AUTO_SIZES = (224, 256, 320)
MIN_NG = {"auroc": 8, "f1": 10}  # NG validation images below which a choice is noise


class Range(BaseModel):
    """A numeric range."""

    model_config = ConfigDict(extra="forbid", strict=True)

    low: int | float
    high: int | float
    step: int | float | None = None
    log: bool = False


class TuningSection(BaseModel):
    """The ``tuning:`` section as written."""

    model_config = ConfigDict(extra="forbid", strict=True)

    objective: Literal["auroc", "f1"] = "auroc"
    n_trials: int | None = Field(12, ge=1, le=1000)
    timeout_minutes: float | None = Field(None, gt=0)
    seed: int = 0
    resamples: int = Field(3, ge=1, le=10)
    feature_cache_mb: int = Field(4096, ge=0)
    space: dict[str, list[Any] | Range] | Literal["auto"] = "auto"


@dataclass(frozen=True)
class Dimension:
    """One searched train arg.

    Attributes:
        key: ``model_name``, ``img_size`` or ``model_parameters.<key>``.
        choices: The categorical values (None for a range).
        low: Range start.
        high: Range end.
        step: Range step (None: continuous floats, 1 for ints).
        log: Sample on a log scale.
        integer: An int range.
    """

    key: str
    choices: tuple[Any, ...] | None = None
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def model(self) -> str | None:
        """The model a ``model_parameters`` key belongs to (None for shared keys)."""
        if not self.key.startswith("model_parameters."):
            return None
        name = self.key.split(".", 1)[1]

        for model, keys in model_parameters_class().KEYS.items():
            if name in keys.values():
                return model
        return None  # backbone_weights, pretrained: shared by every model


@dataclass(frozen=True)
class Tuning:
    """A validated tuning section."""

    objective: str
    n_trials: int | None
    timeout_s: float | None
    seed: int
    resamples: int
    dimensions: tuple[Dimension, ...]
    feature_cache_bytes: int = 4096 * 2**20  # the trials' shared memo of backbone features (0: none)


def _train_args(values: dict[str, Any], where: str) -> None:
    """Check train args (with nested ``model_parameters``) with the train step's own model."""
    validate_args(TrainArgs, values, where)


def _nested(key: str, value: Any) -> dict[str, Any]:
    if key.startswith("model_parameters."):
        return {"model_parameters": {key.split(".", 1)[1]: value}}
    return {key: value}


def _dimension(key: str, value: list[Any] | Range, base: dict[str, Any]) -> Dimension:
    where = f"tuning.space.{key}"
    top = key.split(".", 1)[0]
    if top not in TrainArgs.model_fields or top in FIXED or (top == "model_parameters" and "." not in key):
        allowed = [*sorted(set(TrainArgs.model_fields) - FIXED - {"model_parameters"}), "model_parameters.<key>"]
        msg = f"plan error: {where} is not a train arg a search can change; use one of {', '.join(allowed)}"
        raise PlanError(msg)
    if key.startswith("model_parameters."):
        name = key.split(".", 1)[1]
        if name not in model_parameters_class().model_fields:
            msg = f"plan error: {where}: '{name}' is not a model parameter; see model_parameters in docs/plan.md"
            raise PlanError(msg)
    if isinstance(value, list):
        if not value:
            msg = f"plan error: {where} is an empty list; give the values to try"
            raise PlanError(msg)
        for choice in value:
            _train_args({**base, **_nested(key, choice)}, "tuning.space")
        return Dimension(key, tuple(value))
    integer = isinstance(value.low, int) and isinstance(value.high, int) and isinstance(value.step, int | None)
    if not value.low < value.high:
        msg = f"plan error: {where} is an empty range ({value.low} to {value.high}); make low below high"
        raise PlanError(msg)
    if value.log and value.low <= 0:
        msg = f"plan error: {where} has log: true with low {value.low}; a log range needs low above 0"
        raise PlanError(msg)
    if value.log and value.step is not None:
        msg = f"plan error: {where} has both log and step; use one"
        raise PlanError(msg)
    for end in (value.low, value.high):
        _train_args({**base, **_nested(key, end)}, "tuning.space")
    return Dimension(key, None, float(value.low), float(value.high), value.step, value.log, integer)


def auto_dimensions() -> tuple[Dimension, ...]:
    """The built-in space: every registered model, the offline backbones, image sizes, image scores, supervision.

    Each model with a ``backbone`` parameter gets its own backbone dimension (the offline ones, whose ImageNet
    weights come from installed packages), and each with an ``image_score`` parameter its choices. A model
    added to the registry joins the space with no change here.

    Returns:
        The dimensions.
    """
    offline = tuple(name for name, spec in BACKBONES.items() if spec.package is not None)
    keys = model_parameters_class().KEYS
    # supervised: the NG images also train a head (models without one, or too few NG images, train unsupervised)
    dimensions = [
        Dimension("model_name", tuple(MODELS)),
        Dimension("img_size", AUTO_SIZES),
        Dimension("supervised", (False, True)),
    ]
    for model in MODELS:
        params = MODELS[model].params
        if "backbone" in keys[model]:
            dimensions.append(Dimension(f"model_parameters.{keys[model]['backbone']}", offline))
        if "image_score" in keys[model]:
            options = get_args(params.model_fields["image_score"].annotation)  # a Literal's values
            dimensions.append(Dimension(f"model_parameters.{keys[model]['image_score']}", tuple(options)))
    return tuple(dimensions)


def current_value(key: str, train_args: dict[str, Any]) -> Any:
    """The plan's own value of a searched key (a model parameter it leaves unset: the model's default).

    Args:
        key: A dimension key.
        train_args: The plan's train args.

    Returns:
        The value (an unset key: the train step's default; None for ``img_size``, the model's own size).
    """
    if key.startswith("model_parameters."):
        name = key.split(".", 1)[1]
        value = (train_args.get("model_parameters") or {}).get(name)
        model = Dimension(key).model
        return _model_default(model, name) if value is None and model is not None else value
    value = train_args.get(key)
    field = TrainArgs.model_fields.get(key)
    return field.default if value is None and field is not None else value


def _model_default(model: str, plan_key: str) -> Any:
    """A model parameter's default, by its plan key (``patchcore_image_score`` -> ``map_max``)."""
    field = next(name for name, key in model_parameters_class().KEYS[model].items() if key == plan_key)
    return MODELS[model].params.model_fields[field].default


def _with_current(dimension: Dimension, train_args: dict[str, Any]) -> Dimension:
    """An auto dimension that also offers the plan's own value, so that the plan itself is a trial."""
    current = current_value(dimension.key, train_args)
    if dimension.choices is None or current in dimension.choices:  # a range holds the plan's value or not
        return dimension
    return Dimension(dimension.key, (current, *dimension.choices))


def parse_tuning(raw: Any, train_args: dict[str, Any]) -> Tuning:
    """Validate the plan's ``tuning:`` section.

    Args:
        raw: The section as loaded (a map, ``auto`` or None).
        train_args: The plan's train step args (every searched value is checked on top of them).

    Returns:
        The tuning.

    Raises:
        PlanError: One line naming the first problem.
    """
    if raw is None or raw == "auto":
        raw = {"space": "auto"}
    if not isinstance(raw, dict):
        msg = "plan error: 'tuning' must be a map (objective, n_trials, space, ...) or 'auto'"
        raise PlanError(msg)
    try:
        section = TuningSection.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        msg = f"plan error: tuning.{where}: {error['msg']}"
        raise PlanError(msg) from None
    if section.n_trials is None and section.timeout_minutes is None:
        msg = "plan error: tuning needs n_trials or timeout_minutes (or both) to know when to stop"
        raise PlanError(msg)
    if section.space == "auto":
        dimensions = tuple(_with_current(d, train_args) for d in auto_dimensions())
    else:
        if not section.space:
            msg = "plan error: tuning.space is empty; list the train args to search, or write space: auto"
            raise PlanError(msg)
        dimensions = tuple(_dimension(k, v, dict(train_args)) for k, v in section.space.items())
    models = next(
        (d.choices for d in dimensions if d.key == "model_name" and d.choices is not None),
        (current_value("model_name", train_args),),
    )
    for dimension in dimensions:
        if dimension.model is not None and dimension.model not in models:
            msg = (
                f"plan error: tuning.space.{dimension.key} has no effect: model_name is only "
                f"{', '.join(map(str, models))}; add {dimension.model} to model_name or remove the key"
            )
            raise PlanError(msg)
    dimensions = tuple(
        sorted(dimensions, key=lambda d: d.key != "model_name")
    )  # the model first: the rest depend on it
    timeout = section.timeout_minutes * 60 if section.timeout_minutes else None
    return Tuning(
        section.objective,
        section.n_trials,
        timeout,
        section.seed,
        section.resamples,
        dimensions,
        section.feature_cache_mb * 2**20,
    )


def train_values(dimensions: tuple[Dimension, ...], chosen: dict[str, Any]) -> dict[str, Any]:
    """The train-arg changes of a trial, nested as the plan holds them.

    Args:
        dimensions: The space.
        chosen: The trial's values by dimension key.

    Returns:
        ``{"img_size": 256, "model_parameters": {"patchcore_backbone": ...}}``.
    """
    values: dict[str, Any] = {}
    for dimension in dimensions:
        if dimension.key not in chosen:
            continue
        for key, value in _nested(dimension.key, chosen[dimension.key]).items():
            if isinstance(value, dict):
                values.setdefault(key, {}).update(value)
            else:
                values[key] = value
    return values
