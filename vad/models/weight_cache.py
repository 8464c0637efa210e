"""A value derived from a module's weights, rebuilt only when those weights change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from torch import nn

T = TypeVar("T")


def weights_key(module: nn.Module) -> tuple:
    """Identity, storage and version of every parameter and buffer.

    It changes when weights are loaded (``load_state_dict`` copies in place, which bumps the
    version), stepped by an optimiser, or moved to another layout (new storage). Inference tensors (made under
    ``torch.inference_mode``, as a batch-norm-folded copy built while scoring is) have no version counter and
    cannot be changed in place outside inference mode: their identity and storage are their key.

    Args:
        module: The module.

    Returns:
        A hashable key.
    """
    return tuple(
        (id(t), t.data_ptr(), -1 if t.is_inference() else t._version) for t in [*module.parameters(), *module.buffers()]
    )


class WeightKeyedCache(Generic[T]):
    """Holds one value built from a module's weights; kept outside the module, so not in its state dict."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: T | None = None

    def get(self, module: nn.Module, build: Callable[[], T]) -> T:
        """The cached value, built again by ``build`` if ``module``'s weights changed since the last call.

        Args:
            module: The module the value is derived from.
            build: Makes the value from the module as it is now.

        Returns:
            The value.
        """
        key = weights_key(module)
        if self._value is None or key != self._key:
            self._value = build()
            self._key = key
        return self._value
