"""The drift reference saved with a model: what the validation OK images scored (``drift_reference.json``).

Two measures, each a list of values: ``anomaly_score`` (the normalised score; not ``raw_score``, whose scale an
int8 graph changes: it is calibrated on its own, so only the normalised score is comparable across runtimes) and
``ood_score`` (where the model has an out-of-distribution check). A model trained before the reference existed has
no file: drift is then unavailable, never an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vad.calibration import Scored
from vad.ood import OodCheck

REFERENCE_FILE = "drift_reference.json"
FORMAT = 1
ANOMALY = "anomaly_score"
OOD = "ood_score"
MEASURES = (ANOMALY, OOD)


@dataclass(frozen=True)
class DriftReference:
    """The values each measure took on the validation OK images.

    Attributes:
        values: Measure name -> its finite values (float64).
    """

    values: Mapping[str, np.ndarray]

    def save(self, folder: Path) -> Path:
        """Write ``drift_reference.json`` into a model folder.

        Args:
            folder: ``models/train``.

        Returns:
            The file.
        """
        measures = {name: [float(value) for value in values] for name, values in self.values.items()}
        path = folder / REFERENCE_FILE
        path.write_text(json.dumps({"format": FORMAT, "measures": measures}) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: Path) -> DriftReference | None:
        """Read the reference of a model folder.

        Args:
            folder: ``models/train``.

        Returns:
            The reference, or None where the model has none (trained before drift references existed).

        Raises:
            ValueError: The file is damaged or of another format.
        """
        path = folder / REFERENCE_FILE
        if not path.is_file():
            return None
        stored = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(stored, dict) or stored.get("format") != FORMAT:
            found = stored.get("format") if isinstance(stored, dict) else None
            msg = f"{REFERENCE_FILE} has format {found!r}, this release reads {FORMAT}"
            raise ValueError(msg)
        measures = stored.get("measures")
        if not isinstance(measures, dict) or not all(isinstance(values, list) for values in measures.values()):
            msg = f"{REFERENCE_FILE} holds no map of measures to lists of values"
            raise ValueError(msg)
        return cls({str(name): _finite(values) for name, values in measures.items()})


def _finite(values: object) -> np.ndarray:
    """The finite values of a list or array, as float64."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    return array[np.isfinite(array)]


def save_drift_reference(folder: Path, scored: Scored, is_ng: np.ndarray, descriptors: np.ndarray | None) -> Path:
    """Save the drift reference of a trained model: its validation OK images' scores.

    Args:
        folder: ``models/train``, where the calibration and any out-of-distribution check were saved.
        scored: Every validation image, calibrated (``anomaly_score`` in its columns).
        is_ng: Which validation images are NG (left out).
        descriptors: The validation images' out-of-distribution descriptors in the same order, or None (the
            reference then holds no ``ood_score``).

    Returns:
        The file written.
    """
    ok = ~np.asarray(is_ng, dtype=bool)
    values = {ANOMALY: _finite(np.asarray(scored.columns[ANOMALY])[ok])}
    check = OodCheck.load(folder)
    if check is not None and descriptors is not None and len(descriptors) == len(ok):
        values[OOD] = _finite(check.scores(np.asarray(descriptors)[ok]))
    return DriftReference(values).save(folder)
