"""The anomalib classes the product builds on, imported without anomalib's Lightning stack.

anomalib's package ``__init__`` files import every model, Lightning and its data modules: about 6 s on
this machine, for a torch model that needs none of it. Here each such package that nobody has imported
yet is registered as a deferred stand-in: it resolves the few names the torch-level modules below
import from it (:data:`DEFERRED`) and runs its real ``__init__`` the first time anything else is asked of
it (so ``from anomalib.models import Patchcore`` elsewhere still works). This reaches into anomalib's
package layout, so the names relied on are listed here once and ``tests/test_anomalib_api.py`` fails
loudly if an upgrade moves one.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from typing import Any

LAZY = "anomalib.models.components.sampling.k_center_greedy"  # see _LazyClass

# package -> {name other anomalib modules import from it: the module that defines it}
DEFERRED: dict[str, dict[str, str]] = {
    "anomalib.data": {"InferenceBatch": "anomalib.data.dataclasses.torch.base"},
    "anomalib.models": {},
    "anomalib.models.image": {},
    "anomalib.models.image.patchcore": {},
    "anomalib.models.image.fastflow": {},
    "anomalib.models.image.padim": {},
    "anomalib.models.image.supersimplenet": {},
    "anomalib.models.components": {
        "DynamicBufferMixin": "anomalib.models.components.base.dynamic_buffer",
        "GaussianBlur2d": "anomalib.models.components.filters.blur",
        "KCenterGreedy": LAZY,  # only anomalib's own coreset builds one; importing it pulls in scikit-learn (1.3 s)
        "MultiVariateGaussian": "anomalib.models.components.stats.multi_variate_gaussian",
        "TimmFeatureExtractor": "anomalib.models.components.feature_extractors.timm",
    },
    "anomalib.models.components.base": {"DynamicBufferMixin": "anomalib.models.components.base.dynamic_buffer"},
}


class _LazyClass:
    """A class other anomalib modules import and this product never builds (its module is imported at the first call).

    Calling it imports the real class and returns the real instance.
    """

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args, **kwargs)


class _DeferredPackage(types.ModuleType):
    """A package whose ``__init__`` runs only when a name outside its known few is asked for."""

    def __init__(self, spec: importlib.machinery.ModuleSpec, names: dict[str, str]) -> None:
        super().__init__(spec.name)
        self.__path__ = list(spec.submodule_search_locations or [])
        self.__dict__["_deferred_spec"] = spec
        self.__dict__["_deferred_names"] = names

    def __getattr__(self, name: str) -> Any:
        names = self.__dict__["_deferred_names"]
        if name in names:
            source = names[name]
            value = _LazyClass(source, name) if source == LAZY else getattr(importlib.import_module(source), name)
            setattr(self, name, value)
            return value
        if name.startswith("__") or "_deferred_spec" not in self.__dict__:
            raise AttributeError(name)
        spec = self.__dict__.pop("_deferred_spec")
        self.__spec__, self.__file__ = spec, spec.origin
        spec.loader.exec_module(self)  # type: ignore[union-attr]  # the real __init__, into this module
        return getattr(self, name)


def _defer() -> None:
    """Register the stand-ins for the packages of :data:`DEFERRED` that are not imported yet."""
    import anomalib  # its own __init__ is light

    for name, names in DEFERRED.items():
        if name in sys.modules:
            continue
        parent, _, child = name.rpartition(".")
        spec = importlib.machinery.PathFinder.find_spec(name, sys.modules[parent].__path__)
        if spec is None:
            msg = f"anomalib {anomalib.__version__} has no package {name}: the adapter needs updating"
            raise ImportError(msg)
        module = _DeferredPackage(spec, names)
        sys.modules[name] = module
        setattr(sys.modules[parent], child, module)


_defer()

# each name -> the anomalib module that defines it, imported the first time the name is asked for (a PatchCore
# run never imports FastFlow's flows, FrEIA and scipy.stats: about 0.9 s here)
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
