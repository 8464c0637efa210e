"""The anomalib adapter: the names it relies on exist where it expects them, and nothing of anomalib or torch is
patched (no stand-in in ``sys.modules``, no swapped function)."""

from __future__ import annotations

import importlib

import pytest
from conftest import python_lines

from vad.anomalib_api import SOURCES

NAMES = sorted(set(SOURCES.values()))


@pytest.mark.parametrize(("module", "name"), NAMES)
def test_each_name_the_adapter_uses_is_defined_where_it_looks(module, name):
    assert hasattr(importlib.import_module(module), name), f"anomalib moved {name} out of {module}"


@pytest.mark.slow
def test_the_adapter_gives_anomalibs_own_classes_and_anomalib_stays_whole():
    code = (
        "import sys, types\n"
        "import vad.anomalib_api as api\n"
        "print('anomalib' in sys.modules)\n"
        "model = api.PatchcoreModel\n"
        "from anomalib.models import Patchcore\n"
        "from anomalib.models.image.patchcore.torch_model import PatchcoreModel\n"
        "print(model is PatchcoreModel, type(sys.modules['anomalib.models']) is types.ModuleType)\n"
    )
    assert python_lines(code) == ["False", "True True"]


@pytest.mark.slow
def test_training_imports_leave_torch_and_anomalib_unpatched():
    """Building a model (timm, torchvision, anomalib) leaves torch's compiler switch and anomalib's packages theirs."""
    code = (
        "import sys, types, torch\n"
        "disable = torch.compiler.disable\n"
        "from vad.models.patchcore.model import OfflinePatchcore\n"
        "from vad.augment import build_augmentation\n"
        "from vad.runtime import seed_everything\n"
        "seed_everything(0)\n"
        "from anomalib.models.components import KCenterGreedy\n"
        "picks = KCenterGreedy(embedding=torch.randn(50, 4), sampling_ratio=0.2).sample_coreset()\n"
        "print(torch.compiler.disable is disable, tuple(picks.shape))\n"
        "print(all(type(m) is types.ModuleType for n, m in sys.modules.items() if n.startswith('anomalib')))\n"
    )
    assert python_lines(code) == ["True (10, 4)", "True"]
