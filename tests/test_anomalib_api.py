"""The anomalib adapter: the names it relies on exist where it expects them, and anomalib still imports whole."""

from __future__ import annotations

import importlib

import pytest
from conftest import python_lines

from vad.anomalib_api import DEFERRED, SOURCES

NAMES = sorted(
    {(module, name) for names in DEFERRED.values() for name, module in names.items()} | set(SOURCES.values())
)


@pytest.mark.parametrize(("module", "name"), NAMES)
def test_each_name_the_adapter_uses_is_defined_where_it_looks(module, name):
    assert hasattr(importlib.import_module(module), name), f"anomalib moved {name} out of {module}"


@pytest.mark.slow
def test_the_adapter_skips_lightning_and_anomalib_still_imports_whole_afterwards():
    code = (
        "import sys\n"
        "import vad.anomalib_api\n"
        "print('lightning' in sys.modules)\n"
        "from anomalib.models import Patchcore, Fastflow, Padim\n"
        "from anomalib.engine import Engine\n"
        "from anomalib.post_processing import PostProcessor\n"
        "print(Patchcore.__name__, 'lightning' in sys.modules)\n"
    )
    assert python_lines(code) == ["False", "Patchcore True"]


@pytest.mark.slow
def test_a_patchcore_model_imports_no_flow_or_scikit_learn_and_anomalibs_own_coreset_still_builds():
    code = (
        "import sys\n"
        "import torch\n"
        "from vad.models.patchcore.model import OfflinePatchcore\n"
        "print(*(name in sys.modules for name in ('FrEIA', 'sklearn', 'scipy.stats')))\n"
        "from anomalib.models.components import KCenterGreedy\n"
        "picks = KCenterGreedy(embedding=torch.randn(50, 4), sampling_ratio=0.2).sample_coreset()\n"
        "print(tuple(picks.shape), 'sklearn' in sys.modules)\n"
    )
    assert python_lines(code) == ["False False False", "(10, 4) True"]
