"""Drift over time: recent images' scores compared with the validation OK images' (see :mod:`vad.drift.monitor`)."""

from vad.drift.monitor import DriftMonitor, DriftSettings
from vad.drift.reference import REFERENCE_FILE, DriftReference, save_drift_reference
from vad.drift.watch import DriftAlert, DriftWatch

__all__ = [
    "REFERENCE_FILE",
    "DriftAlert",
    "DriftMonitor",
    "DriftReference",
    "DriftSettings",
    "DriftWatch",
    "save_drift_reference",
]
