"""An opt-in, process-wide memo of frozen-backbone outputs, keyed by what they are computed from.

Trials of ``--mode tune`` that share a backbone and an input size extract the same features of the same images
again and again (every trial, every resample). Inside :func:`enabled` the models' backbone calls go through
:func:`backbone_features`, which keeps each image's per-layer features under a key made of

- the backbone's fingerprint: blake2b of its structure, every parameter's and buffer's name, dtype, shape and
  bytes, and the returned layer names (computed once per module instance, again only when its weights change);
- the image: blake2b of its input tensor's bytes, its shape and dtype;
- the call: the batch size, the input's memory layout and the device (a convolution may pick its algorithm by
  the input's shape and layout; images of batches of other compositions but the same size still hit).

A value is only ever served where the uncached call would have computed it from the same weights and the same
input bytes, so the features are exactly those of the uncached path (the tests compare them bit for bit). The
memo is bounded in bytes (least recently used entries go first). Outside :func:`enabled` nothing is hashed or
kept: :func:`backbone_features` is the plain backbone call.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from vad.models.weight_cache import weights_key
from vad.ood.descriptor import tap

DEFAULT_MAX_BYTES = 4 * 1024**3
RESULTS_SHARE = 16  # results derived from features (coreset picks, centroids) get 1/16 of the budget: they are small


@dataclass
class CacheStats:
    """What a memo did.

    Attributes:
        hits: Values served from the memo.
        misses: Values computed (and kept, unless larger than the whole memo).
        evictions: Values dropped to stay within the byte budget.
        bytes: Bytes held now.
        entries: Values held now.
    """

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0

    def line(self) -> str:
        """One log line.

        Returns:
            The counts and the size held.
        """
        return (
            f"{self.hits} hit(s), {self.misses} miss(es), {self.evictions} eviction(s), "
            f"{self.bytes / 2**20:.1f} MiB in {self.entries} entr{'y' if self.entries == 1 else 'ies'}"
        )


class ByteBoundedMemo:
    """A least-recently-used map of tensor tuples, bounded by the bytes of the tensors it holds (thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            msg = f"max_bytes must be 0 or more, got {max_bytes}"
            raise ValueError(msg)
        self.max_bytes = int(max_bytes)
        self.stats = CacheStats()
        self._values: OrderedDict[Hashable, tuple[torch.Tensor, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, tally: bool = True) -> tuple[torch.Tensor, ...] | None:
        """The value of ``key`` (now the most recently used), or None.

        Args:
            key: The key.
            tally: Count a hit or a miss (else the caller counts with :meth:`count`).

        Returns:
            The stored tensors, or None.
        """
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
        if tally:
            self.count(hits=int(value is not None), misses=int(value is None))
        return value

    def count(self, hits: int = 0, misses: int = 0) -> None:
        """Add to the hit and miss counts.

        Args:
            hits: Values served from the memo.
            misses: Values computed.
        """
        with self._lock:
            self.stats.hits += hits
            self.stats.misses += misses

    def put(self, key: Hashable, value: tuple[torch.Tensor, ...]) -> None:
        """Keep ``value``, dropping the least recently used values beyond the budget (a value over it is not kept).

        Args:
            key: The key.
            value: The tensors (the caller hands them over: they must not be changed afterwards).
        """
        size = sum(t.numel() * t.element_size() for t in value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._values.pop(key, None)
            if old is not None:
                self.stats.bytes -= sum(t.numel() * t.element_size() for t in old)
            self._values[key] = value
            self.stats.bytes += size
            while self.stats.bytes > self.max_bytes:
                _, dropped = self._values.popitem(last=False)
                self.stats.bytes -= sum(t.numel() * t.element_size() for t in dropped)
                self.stats.evictions += 1
            self.stats.entries = len(self._values)


class FeatureCache(ByteBoundedMemo):
    """The memo of per-image backbone features, with the backbones' fingerprints and the memo of results."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes - max_bytes // RESULTS_SHARE)
        self.results = ByteBoundedMemo(max_bytes // RESULTS_SHARE)  # see :func:`memoised`
        self._fingerprints: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, bytes]] = weakref.WeakKeyDictionary()
        # the memory layout of each returned feature map, by (fingerprint, call): the backbone decides it
        self.layouts: dict[tuple, tuple[torch.memory_format, ...]] = {}

    def fingerprint(self, backbone: nn.Module, layers: Sequence[str]) -> bytes:
        """The backbone's fingerprint, computed again only when its weights change (:func:`weights_key`).

        Args:
            backbone: The module that computes the features.
            layers: The layer names it returns.

        Returns:
            A blake2b digest of its structure, weights and layers.
        """
        key = (weights_key(backbone), tuple(layers))
        known = self._fingerprints.get(backbone)
        if known is None or known[0] != key:
            known = (key, fingerprint(backbone, layers))
            self._fingerprints[backbone] = known
        return known[1]


_active: FeatureCache | None = None


def fingerprint(backbone: nn.Module, layers: Sequence[str]) -> bytes:
    """A digest of everything a backbone's output depends on besides its input.

    Args:
        backbone: The module.
        layers: The layer names it returns.

    Returns:
        blake2b (32 bytes) of its structure (``repr``), the layer names and every state entry's name, dtype,
        shape and bytes.
    """
    digest = hashlib.blake2b(digest_size=32)
    digest.update(repr(backbone).encode())
    digest.update(repr(list(layers)).encode())
    for name, tensor in backbone.state_dict(keep_vars=False).items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor_bytes(tensor))
    return digest.digest()


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a tensor's values, in logical (row-major) order, whatever its layout, dtype or device.

    Args:
        tensor: The tensor.

    Returns:
        Its bytes.
    """
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def active() -> FeatureCache | None:
    """The memo in use, or None outside :func:`enabled`.

    Returns:
        The memo.
    """
    return _active


@contextmanager
def enabled(max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[FeatureCache]:
    """Memoise backbone features (:func:`backbone_features`) and results computed from them (:func:`memoised`).

    A new, empty memo replaces any memo in use for the block; the previous one is back afterwards.

    Args:
        max_bytes: The most bytes held: features, and a sixteenth of it for results (least recently used values
            are dropped beyond it).

    Yields:
        The memo (its ``stats`` say what it did).
    """
    global _active
    previous, _active = _active, FeatureCache(max_bytes)
    try:
        yield _active
    finally:
        _active = previous


@contextmanager
def suspended() -> Iterator[None]:
    """No memo inside the block (the one in use is back afterwards): for work whose time is measured.

    Yields:
        Nothing.
    """
    global _active
    previous, _active = _active, None
    try:
        yield
    finally:
        _active = previous


def _layout(tensor: torch.Tensor) -> torch.memory_format:
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def backbone_features(backbone: nn.Module, layers: Sequence[str], images: torch.Tensor) -> list[torch.Tensor]:
    """``backbone(images)`` without gradients: one feature map per layer, from the memo where it holds them.

    A batch with any image not in the memo runs whole, exactly as without the memo (each of its images counts as
    a miss), and its new images' features are kept; a batch held whole is assembled from the memo in the layouts
    the backbone gave (each image counts as a hit).

    Args:
        backbone: The frozen feature network (in eval mode).
        layers: The layer names it returns (part of its fingerprint).
        images: The batch (B, C, H, W), in the layout the backbone is to run in.

    Returns:
        One feature tensor per layer, (B, ...).
    """
    features = _features(backbone, layers, images)
    tap(features)  # the out-of-distribution descriptor, where a caller collects it (vad.ood.descriptor)
    return features


def _features(backbone: nn.Module, layers: Sequence[str], images: torch.Tensor) -> list[torch.Tensor]:
    """:func:`backbone_features` without the tap."""
    cache = _active
    if cache is None:
        with torch.no_grad():
            return list(backbone(images))
    model = cache.fingerprint(backbone, layers)
    call = (len(images), tuple(images.shape[1:]), str(images.dtype), str(_layout(images)), str(images.device))
    keys = [(model, hashlib.blake2b(tensor_bytes(image), digest_size=32).digest(), call) for image in images]
    found = [cache.get(key, tally=False) for key in keys]
    layouts = cache.layouts.get((model, call))
    if layouts is not None and all(value is not None for value in found):
        cache.count(hits=len(found))
        return [
            _assemble([value[layer] for value in found if value is not None], layout)
            for layer, layout in enumerate(layouts)
        ]
    cache.count(misses=len(found))  # the backbone runs for every image of the batch
    with torch.no_grad():
        features = list(backbone(images))
    cache.layouts[(model, call)] = tuple(_layout(feature) for feature in features)
    for position, (key, value) in enumerate(zip(keys, found, strict=True)):
        if value is None:  # one image's features, compact (a view would keep the whole batch alive)
            cache.put(
                key, tuple(feature[position].clone(memory_format=torch.contiguous_format) for feature in features)
            )
    return features


def _assemble(images: list[torch.Tensor], layout: torch.memory_format) -> torch.Tensor:
    """A batch of per-image tensors in ``layout`` (one copy each, into a new tensor the caller may change)."""
    first = images[0]
    batch = torch.empty((len(images), *first.shape), dtype=first.dtype, device=first.device, memory_format=layout)
    for position, image in enumerate(images):
        batch[position].copy_(image)
    return batch


def memoised(
    kind: str, inputs: Sequence[torch.Tensor], settings: Hashable, compute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """``compute()``, or inside :func:`enabled` the tensor it gave for the same inputs and settings.

    For deterministic computations on feature tensors, such as PatchCore's coreset selection: the key is ``kind``,
    a blake2b digest of every input's shape, dtype and bytes, and ``settings`` (everything else the result
    depends on). Outside :func:`enabled` it is ``compute()`` alone.

    Args:
        kind: What is computed (keeps the keys of different computations apart).
        inputs: The tensors it is computed from.
        settings: Its other arguments (hashable).
        compute: Computes it.

    Returns:
        The result (a copy of the memoised one: the caller may change it).
    """
    cache = _active
    if cache is None:
        return compute()
    digest = hashlib.blake2b(digest_size=32)
    for tensor in inputs:
        digest.update(f"{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor_bytes(tensor))
    key = (kind, digest.digest(), settings)
    found = cache.results.get(key)
    if found is not None:
        return found[0].clone()
    result = compute()
    cache.results.put(key, (result.clone(),))
    return result
