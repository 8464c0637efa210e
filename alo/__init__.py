"""ALO-style framework: plans, the step contract, runs, artifacts, logs and summaries.

It knows nothing about images: a solution package (``assets``) provides the steps.
"""

from alo.args import StepArgs
from alo.asset import Asset, Config, Data, StepContext
from alo.errors import AloError, DataError, LockError, ModelError, PlanError
from alo.logs import Progress
from alo.summary import build_summary, write_summary

__all__ = [
    "AloError",
    "Asset",
    "Config",
    "Data",
    "DataError",
    "LockError",
    "ModelError",
    "PlanError",
    "Progress",
    "StepArgs",
    "StepContext",
    "build_summary",
    "write_summary",
]
