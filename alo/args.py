"""Validation of step arguments with pydantic, reported as one readable line.

A step declares its arguments as a pydantic model (see :class:`StepArgs`). This module turns
pydantic's errors into messages that name the plan key path, the value found and what is
allowed, with a "did you mean" suggestion for misspelt keys.
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from alo.errors import PlanError


class StepArgs(BaseModel):
    """Base class for a step's arguments: strict types, unknown keys refused, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


ArgsT = TypeVar("ArgsT", bound=BaseModel)


def suggest(name: str, candidates: list[str] | set[str]) -> str:
    """Return a " (did you mean 'x'?)" hint for a near name, or an empty string.

    Args:
        name: The unknown name the user wrote.
        candidates: The names that are allowed.

    Returns:
        The hint, ready to append to a message.
    """
    close = difflib.get_close_matches(str(name), sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk nested pydantic models along an error location to the model that owns the last key."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None or not isinstance(part, str):
            return None
        field = _field_by_key(current, part)
        annotation = field.annotation if field else None
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return current


def _field_by_key(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key == name or key in _aliases(field):
            return field
    return None


def _aliases(field: Any) -> list[str]:
    alias = field.validation_alias
    if alias is None:
        return []
    choices = getattr(alias, "choices", [alias])
    return [choice for choice in choices if isinstance(choice, str)]


def allowed_keys(model: type[BaseModel]) -> list[str]:
    """List the keys a model accepts (field names, not the legacy aliases).

    Args:
        model: A pydantic model class.

    Returns:
        Sorted field names.
    """
    return sorted(model.model_fields)


def _describe(error: ErrorDetails, model: type[BaseModel], where: str) -> str:
    loc = tuple(error["loc"])
    path = ".".join([where, *[str(part) for part in loc]]) if loc else where
    value = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(model, loc) or model
        keys = allowed_keys(owner)
        return f"unknown key '{path}'{suggest(str(loc[-1]), keys)}; allowed keys: {', '.join(keys)}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"'{path}' is {value!r}{suggest(str(value), _literal_words(expected))}; allowed values: {expected}"
    if kind == "missing":
        return f"'{path}' is required but missing"
    message = error["msg"][0].lower() + error["msg"][1:]
    return f"'{path}' is {value!r}: {message}"


def _literal_words(expected: str) -> list[str]:
    return [word.strip(" '\"") for word in expected.replace(" or ", ",").split(",") if word.strip(" '\"")]


def validate_args(model: type[ArgsT], values: dict[str, Any], where: str) -> ArgsT:
    """Validate a step's raw arguments into its typed model.

    Args:
        model: The step's argument model.
        values: The raw mapping from the plan.
        where: The key path of the arguments in the plan, used in messages.

    Returns:
        The validated, immutable arguments, defaults filled in.

    Raises:
        PlanError: One line per the first problem, with the count of further problems.
    """
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        errors = exc.errors()
        first = _describe(errors[0], model, where)
        more = f" (and {len(errors) - 1} more problem(s) in the same step)" if len(errors) > 1 else ""
        msg = f"plan error: {first}{more}"
        raise PlanError(msg) from None
