"""The trained model as an MLflow pyfunc model: ``mlflow.pyfunc.load_model`` or ``mlflow models serve`` score images.

It is logged as "models from code" (:mod:`apps.mlflow.pyfunc`; no pickled object) and holds the run's
``models`` folder and this project's scoring code (``alo``, ``vad``, without bytecode and the
tuner). Loading it builds a :class:`~vad.detector.Detector` (runtime ``auto``: the exported graph
where it was proven and faster, else torch). Input: a DataFrame with a column ``image`` of file paths, or
``image_base64`` of base64-encoded image files (what a JSON request to ``mlflow models serve`` can carry).
Output: per image ``raw_score``, ``anomaly_score``, ``pred_label``, ``certainty``, ``is_anomalous``,
``ood_score`` and ``in_distribution``, as ``output.csv`` has them (the last two empty, not required, for a
model without an out-of-distribution check; ``in_distribution`` false: not the kind of image the model was
trained on).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CODE_PACKAGES = ("alo", "vad")
CODE_LEFT_OUT = ("__pycache__", "*.pyc", "tuning")  # what scoring never imports
RESULT_TYPES = {
    "raw_score": "double",
    "anomaly_score": "double",
    "pred_label": "string",
    "certainty": "double",
    "is_anomalous": "boolean",
    "ood_score": "double",
    "in_distribution": "boolean",
}
OPTIONAL_RESULTS = ("ood_score", "in_distribution")  # empty for a model without an out-of-distribution check


def log_model(mlflow: Any, models: Path) -> Any:
    """Log a ``models`` folder as the active run's pyfunc model ``model``.

    Args:
        mlflow: The MLflow module (tracking URI set, a run active).
        models: The run's ``models`` folder.

    Returns:
        MLflow's model info.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from vad.detector import RESULT_COLUMNS

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image", required=False), ColSpec("string", "image_base64", required=False)]),
        outputs=Schema(
            [
                ColSpec(RESULT_TYPES[column], column, required=column not in OPTIONAL_RESULTS)
                for column in RESULT_COLUMNS
            ]
        ),
    )
    with tempfile.TemporaryDirectory(prefix="vad-code-") as code:
        packages = []
        for package in CODE_PACKAGES:  # the scoring code only: no bytecode, no web page
            shutil.copytree(ROOT / package, Path(code) / package, ignore=shutil.ignore_patterns(*CODE_LEFT_OUT))
            packages.append(str(Path(code) / package))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc.py")),  # models from code: nothing pickled
            artifacts={"models": str(models)},
            code_paths=packages,
            pip_requirements=str(ROOT / "requirements.txt"),
            signature=signature,
        )
