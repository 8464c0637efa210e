"""The train step's settings (the plan's ``train`` arguments), validated: one definition for the step and the tuner."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from alo import StepArgs
from vad.export.runtime import DEFAULT_FORMATS, ExportFormat
from vad.models import MODELS, entry, model_parameters_class

Augmentation = Literal["rotation", "brightness", "contrast", "saturation", "hue", "blur"]
if TYPE_CHECKING:  # built from the registry at run time: the checker sees a string and the parameters' base class
    from vad.models import ModelParameters

    ModelName = str
else:
    ModelName = Literal[tuple(MODELS)]
    ModelParameters = model_parameters_class()


class TrainArgs(StepArgs):
    """Arguments of the train step (reference guide defaults)."""

    model_name: ModelName = "fastflow"
    experiment_seed: int = 42
    img_size: int | list[int] | None = None
    batch_size: int = Field(4, ge=1, le=1024)
    max_epochs: int = Field(15, ge=1, le=1000)
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    monitor_metric: Literal["image_AUROC", "image_F1Score", "loss"] = "image_AUROC"
    save_validation_heatmap: bool = True
    percentile: float = Field(0.8, gt=0.0, le=1.0)
    augmentation_list: list[Augmentation] = Field(default_factory=list)
    augmentation_choice: int = Field(3, ge=0, le=20)
    rotation_angle: int = Field(10, ge=0, le=180)
    brightness_degree: float = Field(0.3, ge=0.0, le=1.0)
    contrast_degree: float = Field(0.3, ge=0.0, le=1.0)
    saturation_degree: float = Field(0.3, ge=0.0, le=1.0)
    hue_degree: float = Field(0.3, ge=0.0, le=0.5)
    blur_kernel_size: int = Field(5, ge=0, le=255)
    model_parameters: ModelParameters = Field(default_factory=ModelParameters)
    export: list[ExportFormat] = Field(default_factory=lambda: list(DEFAULT_FORMATS))
    precision: Literal["fp32", "int8"] = "fp32"
    supervised: bool = False
    update_from: str | None = None  # a models folder: update that model with the new OK images (main.py --mode update)
    feedback_csv: str | None = None  # verdicts (review/feedback.csv): OK rows join training, NG rows validation

    @model_validator(mode="after")
    def _check_precision(self) -> TrainArgs:
        if self.precision == "int8" and "openvino" not in self.export:
            msg = "precision int8 quantises the OpenVINO graph: add openvino to the train arg export, or use fp32"
            raise ValueError(msg)
        return self

    @field_validator("img_size")
    @classmethod
    def _check_img_size(cls, value: int | list[int] | None) -> int | list[int] | None:
        if value is None:
            return value
        sizes = [value] if isinstance(value, int) else value
        if (isinstance(value, list) and len(value) != 2) or not all(32 <= size <= 2048 for size in sizes):
            msg = "use an int (e.g. 256) or [height, width], each between 32 and 2048"
            raise ValueError(msg)
        return value

    def input_size(self) -> int | list[int]:
        """The ``img_size`` to use: the plan's, or the model's default when the plan leaves it out.

        Returns:
            An int (shorter side, aspect ratio kept) or ``[height, width]``.
        """
        if self.img_size is not None:
            return self.img_size
        default = entry(self.model_name).params.DEFAULT_IMG_SIZE
        return default if isinstance(default, int) else list(default)
