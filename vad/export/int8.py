"""int8 quantisation of an OpenVINO graph by NNCF, in scopes that keep more of the graph in fp32 each.

Calibrated on OK training images only, and never on the ones the int8 gate judges it on (:func:`split_images`);
:mod:`vad.export.writer` tries the scopes of :data:`INT8_SCOPES` in turn and keeps the first graph that passes the
fidelity gate (:func:`vad.export.gates.int8_gate`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vad.export.runtime import decline_telemetry
from vad.images import model_pixels, read_image
from vad.ood.fitting import evenly_spaced

CALIBRATION_IMAGES = 300  # OK training images the quantiser sees at most
HOLD_OUT_EVERY = 4  # every 4th OK training image (the 4th, 8th, ...) is held out of calibration for the gate
GATE_TRAINING_IMAGES = 100  # held-out OK training images the gate scores at most (evenly spaced)
DEPTHWISE = "GroupConvolution"  # OpenVINO's operation for grouped (here: depthwise) convolutions
WEIGHTED = ("Convolution", "GroupConvolution", "MatMul")  # the operations whose weights NNCF quantises
# The model's own scoring after the backbone, by the names the ONNX trace gives its operations (``/scorer/...`` but
# not ``/scorer/backbone/...``; a graph that ends at the embedding has none): NNCF's ignored-scope pattern.
OUTSIDE_BACKBONE = r"^/scorer/(?!backbone/).*"
FIRST_LAYERS = 2  # the backbone's first weighted operations, kept fp32 by the ``-stem`` scopes


@dataclass(frozen=True)
class Int8Scope:
    """What one int8 scope keeps in fp32.

    Attributes:
        name: Its name in ``parity.json``.
        words: Its name in messages ("quantising {words}: ...").
        scoring: The model's own scoring after the backbone (FastFlow's flows) stays fp32.
        depthwise: The backbone's depthwise convolutions stay fp32.
        first_layers: The backbone's first weighted operations that stay fp32 (the stem, at full resolution:
            the thin low-contrast cracks of real cells live in small activation differences there).
    """

    name: str
    words: str
    scoring: bool = False
    depthwise: bool = False
    first_layers: int = 0


# The scopes, tried in this order until one passes the fidelity gate: faster first, each keeping more in fp32.
# The whole graph is the fastest (1.8-2.2x OpenVINO fp32) and, on the generated products, 0.29-0.38 of the fp32
# score range away from it; on the real cells the stem decides most of the difference (BENCHMARKS.md "int8: the
# fidelity gate"); the dense convolutions alone follow fp32 closest, at 1.1-1.2x.
SCOPES = (
    Int8Scope("graph", "the graph"),
    Int8Scope("graph-stem", "the graph but its stem", first_layers=FIRST_LAYERS),
    Int8Scope("backbone", "the backbone", scoring=True),
    Int8Scope("backbone-stem", "the backbone but its stem", scoring=True, first_layers=FIRST_LAYERS),
    Int8Scope("dense", "the dense convolutions", scoring=True, depthwise=True),
    Int8Scope("dense-stem", "the dense convolutions but the stem", scoring=True, depthwise=True, first_layers=2),
)
SCOPE_BY_NAME = {scope.name: scope for scope in SCOPES}
INT8_SCOPES = tuple(SCOPE_BY_NAME)
SCOPE_NAMES = {scope.name: scope.words for scope in SCOPES}  # in messages


@contextlib.contextmanager
def quiet() -> Any:
    """NNCF's progress bars and OpenVINO's messages kept out of the pipeline's console, their telemetry declined."""
    decline_telemetry()  # before NNCF is imported: it counts the run at import
    with Path(os.devnull).open("w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        nncf_logger = logging.getLogger("nncf")
        level = nncf_logger.level
        nncf_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            nncf_logger.setLevel(level)


def _weighted(model: Any) -> list[tuple[str, str]]:
    """(type, name) of a graph's weighted operations, in graph order."""
    return [
        (op.get_type_name(), op.get_friendly_name()) for op in model.get_ordered_ops() if op.get_type_name() in WEIGHTED
    ]


def first_layers(model: Any, count: int = FIRST_LAYERS) -> list[str]:
    """The names of the backbone's first ``count`` weighted operations, in graph order.

    Args:
        model: An ``openvino.Model`` traced by :mod:`vad.export.trace`.
        count: How many.

    Returns:
        The operation names.
    """
    return [name for _, name in _weighted(model) if not re.match(OUTSIDE_BACKBONE, name)][:count]


def kept_fp32(model: Any, scope: str) -> frozenset[str]:
    """The weighted operations a scope keeps in fp32 (what tells two scopes' graphs apart).

    Args:
        model: The fp32 ``openvino.Model``.
        scope: A name from :data:`INT8_SCOPES`.

    Returns:
        Operation names.
    """
    chosen = SCOPE_BY_NAME[scope]
    kept = set(first_layers(model, chosen.first_layers))
    for kind, name in _weighted(model):
        outside = bool(re.match(OUTSIDE_BACKBONE, name))
        if (chosen.scoring and outside) or (chosen.depthwise and kind == DEPTHWISE and not outside):
            kept.add(name)
    return frozenset(kept)


def scope_differs(model: Any, scope: str) -> bool:
    """Whether a scope keeps another set of operations in fp32 than every scope before it (else: the same graph).

    Args:
        model: The fp32 ``openvino.Model``.
        scope: A name from :data:`INT8_SCOPES`.

    Returns:
        True when its graph is new.
    """
    kept = kept_fp32(model, scope)
    earlier = INT8_SCOPES[: INT8_SCOPES.index(scope)]
    return all(kept != kept_fp32(model, name) for name in earlier)


def int8_ignored_scope(nncf: Any, model: Any, scope: str) -> Any:
    """NNCF's ignored scope for one of :data:`INT8_SCOPES` (None for ``graph``: nothing is kept in fp32).

    Args:
        nncf: The imported ``nncf`` module.
        model: The fp32 ``openvino.Model`` (its first layers are named).
        scope: A name from :data:`INT8_SCOPES`.

    Returns:
        An ``nncf.IgnoredScope`` or None.
    """
    chosen = SCOPE_BY_NAME[scope]
    names = first_layers(model, chosen.first_layers)
    patterns = [OUTSIDE_BACKBONE] if chosen.scoring else []
    types = [DEPTHWISE] if chosen.depthwise else []
    if not (names or patterns or types):
        return None
    return nncf.IgnoredScope(names=names, patterns=patterns, types=types, validate=False)


def split_images(train_images: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the OK training images into the quantiser's calibration set and the gate's held-out images (disjoint).

    Every :data:`HOLD_OUT_EVERY`-th image (the 4th, 8th, ...) is held out for the gate (at most
    :data:`GATE_TRAINING_IMAGES` of them, evenly spaced), the others calibrate (at most :data:`CALIBRATION_IMAGES`,
    the first ones). Deterministic: the same files give the same split.

    Args:
        train_images: OK training image files.

    Returns:
        (calibration files, held-out files).
    """
    files = list(train_images)
    held = [path for i, path in enumerate(files) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
    calibration = [path for i, path in enumerate(files) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1]
    return calibration[:CALIBRATION_IMAGES], [held[i] for i in evenly_spaced(len(held), GATE_TRAINING_IMAGES)]


def quantize_int8(model: Any, calibration_images: Sequence[str], size: tuple[int, int], scope: str = "graph") -> Any:
    """NNCF's post-training int8 quantisation of an OpenVINO graph, calibrated on OK training images.

    Args:
        model: The fp32 ``openvino.Model``.
        calibration_images: OK training image files (the first :data:`CALIBRATION_IMAGES`; the train step passes
            :func:`split_images`' calibration set).
        size: Input (height, width).
        scope: A name from :data:`INT8_SCOPES` (``graph``: every operation NNCF quantises).

    Returns:
        The quantised ``openvino.Model``.

    Raises:
        ValueError: No calibration images.
    """
    files = list(calibration_images)[:CALIBRATION_IMAGES]
    if not files:
        msg = "no OK training images to calibrate the quantisation on"
        raise ValueError(msg)
    with quiet():
        import nncf

        ignored = int8_ignored_scope(nncf, model, scope)
        options: dict[str, Any] = {} if ignored is None else {"ignored_scope": ignored}
        dataset = nncf.Dataset(files, lambda path: model_pixels(read_image(path), size)[None])
        return nncf.quantize(
            model, dataset, subset_size=len(files), preset=nncf.QuantizationPreset.PERFORMANCE, **options
        )
