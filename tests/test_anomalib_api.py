"""The anomalib adapter: the names it relies on exist where it expects them, and anomalib still imports whole."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from conftest import ROOT

from assets.vad.anomalib_api import DEFERRED, SOURCES


@pytest.mark.parametrize(
    ("package", "name", "module"), [(p, n, m) for p, names in DEFERRED.items() for n, m in names.items()]
)
def test_each_deferred_name_is_defined_where_the_adapter_looks(package, name, module):
    assert hasattr(importlib.import_module(module), name), f"anomalib moved {name} out of {module}"


def test_the_adapter_skips_lightning_and_anomalib_still_imports_whole_afterwards():
    code = (
        "import sys\n"
        "import assets.vad.anomalib_api\n"
        "print('lightning' in sys.modules)\n"
        "from anomalib.models import Patchcore, Fastflow, Padim\n"
        "from anomalib.engine import Engine\n"
        "from anomalib.post_processing import PostProcessor\n"
        "print(Patchcore.__name__, 'lightning' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "Patchcore", "True"]


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_each_adapted_name_is_defined_where_the_adapter_imports_it(name):
    module, attribute = SOURCES[name]
    assert hasattr(importlib.import_module(module), attribute), f"anomalib moved {attribute} out of {module}"


def test_a_patchcore_model_imports_no_flow_or_scikit_learn_and_anomalibs_own_coreset_still_builds():
    code = (
        "import sys\n"
        "import torch\n"
        "from assets.vad.models.patchcore.model import OfflinePatchcore\n"
        "print(*(name in sys.modules for name in ('FrEIA', 'sklearn', 'scipy.stats')))\n"
        "from anomalib.models.components import KCenterGreedy\n"
        "picks = KCenterGreedy(embedding=torch.randn(50, 4), sampling_ratio=0.2).sample_coreset()\n"
        "print(tuple(picks.shape), 'sklearn' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["False False False", "(10, 4) True"]
