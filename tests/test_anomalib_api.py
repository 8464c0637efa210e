"""anomalib as the models use it: each registered model builds on anomalib's own classes, imported as anomalib ships
them, and nothing of anomalib or torch is patched (no stand-in in ``sys.modules``, no swapped function)."""

from __future__ import annotations

import pytest
from conftest import python_lines

from vad.models import MODELS


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_registered_model_builds_on_anomalibs_own_torch_model(name):
    """A model folder imports the anomalib classes it subclasses from where anomalib defines them."""
    import torch

    model_class = MODELS[name].model_class()
    anomalib_bases = [base for base in model_class.__mro__ if base.__module__.startswith("anomalib.")]
    assert anomalib_bases, f"{name} no longer builds on an anomalib class"
    assert all(issubclass(base, torch.nn.Module) for base in anomalib_bases if base is not object)


@pytest.mark.slow
def test_anomalib_stays_whole_after_a_model_is_built():
    code = (
        "import sys, types\n"
        "print('anomalib' in sys.modules)\n"
        "from vad.models.patchcore.model import OfflinePatchcore\n"
        "from anomalib.models import Patchcore\n"
        "from anomalib.models.image.patchcore.torch_model import PatchcoreModel\n"
        "whole = type(sys.modules['anomalib.models']) is types.ModuleType\n"
        "print(issubclass(OfflinePatchcore, PatchcoreModel), whole)\n"
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
