"""The pyfunc model's code, logged as MLflow "models from code" (no pickled object: MLflow runs this file).

See :mod:`apps.mlflow.model` for what it takes and answers.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class VadPythonModel(PythonModel):
    """A :class:`~vad.detector.Detector` behind MLflow's pyfunc interface."""

    def load_context(self, context: Any) -> None:
        """Load the detector from the model's ``models`` artifact.

        Args:
            context: MLflow's context (its ``artifacts["models"]`` is the run's models folder).
        """
        from vad.detector import Detector

        self.detector = Detector.load(Path(context.artifacts["models"]) / "train")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Score the images of ``model_input``.

        Args:
            context: MLflow's context.
            model_input: A DataFrame with a column ``image`` (file paths) or ``image_base64`` (image files).
            params: Unused.

        Returns:
            A DataFrame with the result columns (:data:`~vad.detector.RESULT_COLUMNS`), one row per image.

        Raises:
            ValueError: Neither column is present.
        """
        from vad.detector import RESULT_COLUMNS
        from vad.images import decode_image

        del context, params
        if "image" in model_input.columns:
            images: list[Any] = [str(path) for path in model_input["image"]]
        elif "image_base64" in model_input.columns:
            column = model_input["image_base64"]
            images = [decode_image(base64.b64decode(text), f"row {i}") for i, text in enumerate(column)]
        else:
            msg = "send a column 'image' (file paths) or 'image_base64' (base64-encoded image files)"
            raise ValueError(msg)
        found = self.detector.predict(images) if images else []
        return pd.DataFrame([p.result_row() for p in found], columns=list(RESULT_COLUMNS))


set_model(VadPythonModel())
