"""The model registry: every model the pipeline can train, registered in one place.

A model is a folder under ``vad/models/``: its ``__init__`` holds its parameter class
(light, validated with the plan) and names its implementation (``model.py``, imported only when a
model is built). Adding a model is a new folder plus one line in :data:`MODELS`; no step changes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

from pydantic import AliasChoices, Field, create_model

from alo import StepArgs
from vad.models import fastflow, padim, patchcore, supersimplenet
from vad.models.spec import ModelParams, ModelSpec

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from vad.models.base import VadModel
    from vad.models.scorer import GraphScorer

__all__ = [
    "MODELS",
    "ExportTail",
    "ModelEntry",
    "ModelParameters",
    "ModelParams",
    "ModelSpec",
    "entry",
    "model_parameters_class",
]

ClassT = TypeVar("ClassT")


@runtime_checkable
class ExportTail(Protocol):
    """The numpy tail an exported graph ends in (``ModelEntry.tail``): saved and read beside the graph."""

    @staticmethod
    def save(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
        """Write the tail's arrays into ``models/export`` and return the file."""
        ...

    @classmethod
    def load(cls, folder: Path) -> Self:
        """Read the tail :meth:`save` wrote."""
        ...

    def __call__(self, embedding: np.ndarray, maps: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (B,) and maps (B, H, W) or None of the graph's embedding."""
        ...


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    Attributes:
        name: The plan's ``model_name``.
        params: Its parameter class (defaults live there).
        implementation: ``module:Class`` of the model, imported on first use.
        scorer: ``module:Class`` of its plain-torch scorer (:mod:`vad.models.scorer`).
        tail: ``module:Class`` of the numpy tail its exported graph ends in (its ``save`` and ``load`` write and
            read the tail's arrays in ``models/export``), or None when the graph scores by itself.
    """

    name: str
    params: type[ModelParams]
    implementation: str
    scorer: str
    tail: str | None = None

    def model_class(self) -> type[VadModel]:
        """Import the model class (anomalib, timm: used to train, and to score models saved without a graph).

        Returns:
            The class (a :class:`vad.models.base.VadModel`).
        """
        from vad.models.base import VadModel

        return _import(self.implementation, VadModel)

    def scorer_class(self) -> type[GraphScorer]:
        """Import the scorer class (torch only).

        Returns:
            The class (a :class:`vad.models.scorer.GraphScorer`).
        """
        from vad.models.scorer import GraphScorer

        return _import(self.scorer, GraphScorer)

    def tail_class(self) -> type[ExportTail]:
        """Import the exported runtime's tail class (numpy, no torch).

        Returns:
            The class (an :class:`ExportTail`).

        Raises:
            ValueError: The model's exported graph has no tail.
        """
        if self.tail is None:
            msg = f"{self.name}'s exported graph has no tail"
            raise ValueError(msg)
        found = _imported(self.tail)
        if not (isinstance(found, type) and issubclass(found, ExportTail)):
            msg = f"the registry's {self.tail} is not an ExportTail"
            raise TypeError(msg)
        return found


def _imported(path: str) -> object:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _import(path: str, base: type[ClassT]) -> type[ClassT]:
    found = _imported(path)
    if not (isinstance(found, type) and issubclass(found, base)):
        msg = f"the registry's {path} is not a {base.__name__}"
        raise TypeError(msg)
    return found


MODELS: dict[str, ModelEntry] = {
    "patchcore": ModelEntry(
        "patchcore", patchcore.PatchcoreParams, patchcore.IMPLEMENTATION, patchcore.SCORER, patchcore.TAIL
    ),
    "fastflow": ModelEntry("fastflow", fastflow.FastflowParams, fastflow.IMPLEMENTATION, fastflow.SCORER),
    "padim": ModelEntry("padim", padim.PadimParams, padim.IMPLEMENTATION, padim.SCORER),
    "supersimplenet": ModelEntry(
        "supersimplenet", supersimplenet.SupersimplenetParams, supersimplenet.IMPLEMENTATION, supersimplenet.SCORER
    ),
}


def entry(name: str) -> ModelEntry:
    """The registry entry of a model.

    Args:
        name: A registered model name.

    Returns:
        The entry.

    Raises:
        KeyError: Not a registered model.
    """
    if name not in MODELS:
        msg = f"unknown model {name!r}; registered models: {', '.join(MODELS)}"
        raise KeyError(msg)
    return MODELS[name]


class ModelParameters(StepArgs):
    """``model_parameters`` of the train step: every registered model's parameters under its plan keys.

    The fields are generated from the registry (:func:`model_parameters_class`); ``backbone_weights``
    and ``pretrained`` apply to whichever model is trained.
    """

    KEYS: ClassVar[dict[str, dict[str, str]]] = {}  # model -> its parameter field -> plan key

    backbone_weights: str | None = None
    pretrained: bool = True

    def for_model(self, name: str) -> ModelParams:
        """The parameters of one model, read from its plan keys.

        Args:
            name: A registered model name.

        Returns:
            An instance of that model's parameter class.
        """
        keys = self.KEYS[name]
        return entry(name).params.model_validate({field: getattr(self, key) for field, key in keys.items()})


@cache
def model_parameters_class() -> type[ModelParameters]:
    """Build the plan's ``model_parameters`` class from the registry (the reference ``*_backborn`` accepted).

    Returns:
        A :class:`ModelParameters` subclass with one field per model parameter.
    """
    fields: dict[str, Any] = {}
    keys: dict[str, dict[str, str]] = {}
    for name, registered in MODELS.items():
        keys[name] = {}
        for field, info in registered.params.model_fields.items():
            key = field if field in registered.params.PLAIN_KEYS else f"{name}_{field}"
            if key in fields or key in ModelParameters.model_fields:
                msg = f"model parameter key {key!r} of {name} is already taken"
                raise ValueError(msg)
            alias = AliasChoices(key, f"{name}_backborn") if field == "backbone" else None
            annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
            fields[key] = (annotation, Field(info.default, validation_alias=alias))
            keys[name][field] = key
    generated = create_model("ModelParameters", __base__=ModelParameters, **fields)
    generated.KEYS = keys
    return generated
