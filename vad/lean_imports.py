"""timm, torchvision and deterministic kernels without loading torch's compiler (``torch._dynamo``).

Neither library needs the compiler to build or run a model, yet importing either loads it: torchvision's
``ops.roi_align`` imports one helper from ``torch._dynamo.utils``, and timm decorates a few functions of one
model family (NaFlexViT) with ``torch.compiler.disable``, which imports ``torch._dynamo`` on the spot. That
costs about 1.3 s of every training process here (``torch._dynamo`` brings sympy, triton's stubs and
torch.distributed with it), more than the whole PatchCore fit of a small data set.

:func:`lean_import` imports a module with two stand-ins in place, and only for the length of that import:

- ``torch._dynamo.utils`` answers torchvision's one name with a function that imports the real module at its
  first call;
- ``torch.compiler.disable`` returns a wrapper that applies the real decorator at the function's first call.

After the import both stand-ins are gone from torch: a later ``import torch._dynamo`` (an export,
``torch.compile``) loads the real compiler as usual. What the imported libraries took from them stays theirs:
timm's ``disable_compiler`` (and the NaFlexViT functions it decorated) is the deferred decorator, and
torchvision's ``roi_align`` calls the helper through the function above; both reach the real ones at their
first call, so they behave as before outside ``torch.compile`` (this product never compiles). If the compiler
is already loaded, or the import fails with the stand-ins in place (a library upgrade that needs more of the
compiler), the module is imported the ordinary way. One lock serialises these imports: the stand-ins are
process-wide while they are up.

:func:`use_deterministic_algorithms` is torch's switch of the same name without its one compiler line: torch's
function first imports ``torch._inductor.config`` (which loads ``torch._dynamo``) to set the compiler's own
determinism flag; this product never compiles, so only the kernel switch is set, unless the compiler (or its
config) is loaded already (then torch's function runs as it is).

``tests/test_lean_imports.py`` fails loudly when an upgrade makes any of this useless or wrong.
"""

from __future__ import annotations

import functools
import importlib
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

COMPILER = "torch._dynamo"
PLACEHOLDER = "torch._dynamo.utils"
_LOCK = threading.RLock()  # the stand-ins are process-wide: one lean import at a time


def _is_compile_supported(*args: Any, **kwargs: Any) -> Any:
    """Answer torchvision's one name from ``torch._dynamo.utils``: the real function, imported at the first call."""
    with _LOCK:  # not while a lean import has the placeholder up
        from torch._dynamo.utils import is_compile_supported

    if is_compile_supported is _is_compile_supported:
        msg = "torch._dynamo.utils is still the lean-import placeholder"
        raise RuntimeError(msg)
    return is_compile_supported(*args, **kwargs)


def _deferred_disable(real: Callable[..., Any]) -> Callable[..., Any]:
    """A ``torch.compiler.disable`` that applies ``real`` to each function the first time that function runs."""

    def disable(fn: Callable[..., Any] | None = None, recursive: bool = True, *, reason: str | None = None) -> Any:
        if fn is None:
            return functools.partial(disable, recursive=recursive, reason=reason)
        applied: list[Callable[..., Any]] = []

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not applied:
                applied.append(real(fn, recursive, reason=reason))
            return applied[0](*args, **kwargs)

        return wrapper

    return disable


@contextmanager
def _stand_ins() -> Iterator[None]:
    """Put both stand-ins in place for the length of the block, then restore what was there."""
    import torch
    import torch.compiler

    placeholder = types.ModuleType(PLACEHOLDER)
    placeholder.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]
    real_disable = torch.compiler.disable
    deferred = _deferred_disable(real_disable)
    sys.modules[PLACEHOLDER] = placeholder
    torch.compiler.disable = deferred
    try:
        yield
    finally:
        if torch.compiler.disable is deferred:
            torch.compiler.disable = real_disable
        if sys.modules.get(PLACEHOLDER) is placeholder:
            del sys.modules[PLACEHOLDER]


def _forget(name: str, before: set[str]) -> None:
    """Remove what a failed import of ``name`` left half-loaded, so the ordinary import starts clean."""
    top = name.partition(".")[0]
    for loaded in set(sys.modules) - before:
        if loaded in (top, "torchvision", COMPILER) or loaded.startswith((f"{top}.", "torchvision.", f"{COMPILER}.")):
            del sys.modules[loaded]


def lean_import(name: str) -> types.ModuleType:
    """Import module ``name`` (``"timm"``, ``"torchvision.transforms.v2"``) without loading ``torch._dynamo``.

    Args:
        name: A module of timm, torchvision, or a library that imports them.

    Returns:
        The module, imported as ``importlib.import_module`` would.
    """
    with _LOCK:
        if name in sys.modules or COMPILER in sys.modules:
            return importlib.import_module(name)
        before = set(sys.modules)
        try:
            with _stand_ins():
                return importlib.import_module(name)
        except ImportError:
            _forget(name, before)
            return importlib.import_module(name)


def use_deterministic_algorithms(warn_only: bool = True) -> None:
    """Turn on torch's deterministic kernels (``warn_only``: warn where there is none) without loading the compiler.

    Args:
        warn_only: Warn instead of failing on an operation without a deterministic kernel.
    """
    import torch

    kernels = getattr(torch._C, "_set_deterministic_algorithms", None)
    if kernels is None or COMPILER in sys.modules or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    else:
        kernels(True, warn_only=warn_only)
