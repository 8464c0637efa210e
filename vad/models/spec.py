"""What describes a model: its own parameters (one class per model) and the spec saved with it.

Light on purpose (pydantic only): the plan is validated against these classes before anything
heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from alo import StepArgs

ParamsT = TypeVar("ParamsT", bound="ModelParams")


class ModelParams(StepArgs):
    """Base of a model's parameters. Subclasses add their fields with their defaults (the only place they live).

    The plan writes a field ``f`` of model ``m`` as ``model_parameters.{m}_{f}`` (``PLAIN_KEYS`` are written
    without the prefix), so one plan can hold the settings of every model.
    """

    PLAIN_KEYS: ClassVar[frozenset[str]] = frozenset()
    DEFAULT_IMG_SIZE: ClassVar[int | tuple[int, int]] = (256, 256)

    backbone: str
    layers: list[str] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a trained model: its name, input and its own parameters.

    Attributes:
        model_name: The registry name (``patchcore``, ``fastflow``, ``padim``).
        input_size: (height, width) the images are resized to.
        mean: Per-channel normalisation mean of the backbone.
        std: Per-channel normalisation standard deviation.
        params: The model's parameters, ``backbone`` canonical and ``layers`` resolved.
    """

    model_name: str
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    params: ModelParams

    @property
    def backbone(self) -> str:
        """The canonical backbone name."""
        return self.params.backbone

    @property
    def layers(self) -> list[str]:
        """The feature layers."""
        return list(self.params.layers or [])

    def params_as(self, kind: type[ParamsT]) -> ParamsT:
        """The parameters as the model's own class (a model reads its fields through this).

        Args:
            kind: The model's parameter class.

        Returns:
            ``params``, checked to be a ``kind``.

        Raises:
            TypeError: The spec holds another model's parameters.
        """
        if not isinstance(self.params, kind):
            msg = f"{self.model_name}'s spec holds {type(self.params).__name__}, not {kind.__name__}"
            raise TypeError(msg)
        return self.params

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved in ``train_config.json``.

        Returns:
            A JSON-ready dict.
        """
        return {
            "model_name": self.model_name,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "params": self.params.model_dump(mode="json"),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], params: type[ModelParams]) -> ModelSpec:
        """Read the form :meth:`to_dict` wrote.

        Args:
            values: The saved dict.
            params: The model's parameter class.

        Returns:
            The spec.
        """
        height, width = (int(side) for side in values["input_size"])
        return cls(
            model_name=str(values["model_name"]),
            input_size=(height, width),
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            params=params.model_validate(values["params"]),
        )
