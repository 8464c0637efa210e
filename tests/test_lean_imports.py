"""timm, torchvision and deterministic kernels without torch's compiler, and the compiler still whole afterwards."""

from __future__ import annotations

import pytest
from conftest import python_lines

from vad.lean_imports import _deferred_disable


@pytest.mark.slow
def test_a_training_process_builds_and_runs_a_backbone_without_loading_the_compiler():
    code = (
        "import sys, torch\n"
        "from vad import augment, runtime\n"
        "from vad.backbones import timm\n"
        "import assets.train, vad.reports, vad.models.patchcore.model\n"
        "runtime.seed_everything(3)\n"
        "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())\n"
        "net = timm.create_model('resnet18', pretrained=False, features_only=True, out_indices=(1,)).eval()\n"
        "print(tuple(net(torch.zeros(1, 3, 32, 32))[0].shape))\n"
        "boxes = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]])\n"
        "from torchvision.ops import roi_align\n"
        "pooled = roi_align(torch.arange(16.0).view(1, 1, 4, 4), boxes, output_size=1, aligned=True)\n"
        "print(round(float(pooled), 4))\n"
        "print('torch._dynamo' in sys.modules, 'torch._inductor' in sys.modules)\n"
    )
    # the values 4y + x are linear, so the box's mean is the value at its centre: (1, 1) once aligned by half a pixel
    assert python_lines(code) == ["True True", "(1, 64, 8, 8)", "5.0", "False False"]


@pytest.mark.slow
def test_the_compiler_loads_whole_afterwards_and_the_stand_ins_are_gone():
    code = (
        "import sys, torch\n"
        "from vad.backbones import timm\n"
        "import torch.compiler\n"
        "print(torch.compiler.disable.__module__)\n"
        "import torch._dynamo.utils\n"
        "print(callable(torch._dynamo.utils.is_compile_supported), hasattr(torch._dynamo.utils, 'counters'))\n"
        "fn = torch.compile(lambda x: x * 2 + 1, backend='eager')\n"
        "print(fn(torch.ones(2)).tolist())\n"
        "from timm.layers import disable_compiler\n"
        "print(disable_compiler.__module__, disable_compiler(lambda: 5)())\n"
    )
    # timm keeps the deferred decorator it was given (it applies the real one at a function's first call)
    assert python_lines(code) == ["torch.compiler", "True True", "[3.0, 3.0]", "vad.lean_imports 5"]


@pytest.mark.slow
def test_an_import_that_needs_more_of_the_compiler_falls_back_to_the_ordinary_import(tmp_path):
    source = "from torch._dynamo.utils import counters\nVALUE = len(str(counters))\n"
    (tmp_path / "needs_compiler.py").write_text(source)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from vad.lean_imports import lean_import\n"
        "module = lean_import('needs_compiler')\n"
        "import torch.compiler\n"
        "print(module.VALUE > 0, 'torch._dynamo' in sys.modules, torch.compiler.disable.__module__)\n"
    )
    assert python_lines(code) == ["True True torch.compiler"]


def test_a_deferred_disable_applies_the_real_decorator_once_at_the_first_call():
    applied = []

    def real(fn, recursive, *, reason=None):
        applied.append((fn.__name__, recursive, reason))
        return lambda *args: fn(*args) * 10

    disable = _deferred_disable(real)

    @disable
    def bare(x):
        """Doc kept."""
        return x + 1

    @disable(recursive=False, reason="why")
    def called(x):
        return x - 1

    assert applied == []
    assert (bare(1), bare(2), called(5)) == (20, 30, 40)
    assert applied == [("bare", True, None), ("called", False, "why")]
    assert bare.__doc__ == "Doc kept." and bare.__name__ == "bare"
