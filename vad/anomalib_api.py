"""The anomalib classes the product builds on, each imported from the module that defines it on first use.

Our models subclass anomalib's torch models (PatchCore, FastFlow, PaDiM, SuperSimpleNet) and reuse its feature
extractor, blur, Gaussian and anomaly-generator classes. Each name here resolves to anomalib's own class, imported
the first time the name is asked for (PEP 562), so that building a model imports anomalib and scoring a saved model
(plain torch, :mod:`vad.models.scorer`) never does. Nothing of anomalib is replaced or patched: importing any of
these runs anomalib's package ``__init__`` files as anomalib ships them (their Lightning stack included; about 2 s
of a training process here, BENCHMARKS.md "Speed: scoring engine"). ``tests/test_anomalib_api.py`` fails loudly if
an upgrade moves a name.
"""

from __future__ import annotations

import importlib
from typing import Any

# each name -> the anomalib module that defines it and the name there
SOURCES: dict[str, tuple[str, str]] = {
    "FastflowAnomalyMap": ("anomalib.models.image.fastflow.anomaly_map", "AnomalyMapGenerator"),
    "FastflowLoss": ("anomalib.models.image.fastflow.loss", "FastflowLoss"),
    "FastflowModel": ("anomalib.models.image.fastflow.torch_model", "FastflowModel"),
    "GaussianBlur2d": ("anomalib.models.components.filters", "GaussianBlur2d"),
    "InferenceBatch": ("anomalib.data", "InferenceBatch"),
    "MultiVariateGaussian": ("anomalib.models.components", "MultiVariateGaussian"),
    "PadimAnomalyMap": ("anomalib.models.image.padim.anomaly_map", "AnomalyMapGenerator"),
    "PadimModel": ("anomalib.models.image.padim.torch_model", "PadimModel"),
    "PatchcoreModel": ("anomalib.models.image.patchcore.torch_model", "PatchcoreModel"),
    "SupersimplenetAnomalyMap": ("anomalib.models.image.supersimplenet.torch_model", "AnomalyMapGenerator"),
    "SupersimplenetAnomalyGenerator": ("anomalib.models.image.supersimplenet.anomaly_generator", "AnomalyGenerator"),
    "SupersimplenetFeatureAdapter": ("anomalib.models.image.supersimplenet.torch_model", "FeatureAdapter"),
    "SupersimplenetLoss": ("anomalib.models.image.supersimplenet.loss", "SSNLoss"),
    "SupersimplenetModel": ("anomalib.models.image.supersimplenet.torch_model", "SupersimplenetModel"),
    "SupersimplenetSegDec": ("anomalib.models.image.supersimplenet.torch_model", "SegmentationDetectionModule"),
    "TimmFeatureExtractor": ("anomalib.models.components", "TimmFeatureExtractor"),
    "create_fast_flow_block": ("anomalib.models.image.fastflow.torch_model", "create_fast_flow_block"),
}


def __getattr__(name: str) -> Any:
    """Import an adapted anomalib name from its module on first use (PEP 562), then keep it here."""
    if name not in SOURCES:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    module, attribute = SOURCES[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


__all__ = sorted(SOURCES)
