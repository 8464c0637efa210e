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
from pathlib import Path
from typing import Any

from vad.export.runtime import decline_telemetry
from vad.images import model_pixels, read_image
from vad.ood.fitting import evenly_spaced

CALIBRATION_IMAGES = 300  # OK training images the quantiser sees at most
HOLD_OUT_EVERY = 4  # every 4th OK training image (the 4th, 8th, ...) is held out of calibration for the gate
GATE_TRAINING_IMAGES = 100  # held-out OK training images the gate scores at most (evenly spaced)
# int8 quantisation scopes, tried in this order until one passes the fidelity gate, each keeping more in fp32 and
# following the fp32 graph more closely: the whole graph (the fastest), the backbone only (the model's own scoring
# after it, such as FastFlow's flows, in fp32), then the backbone's dense convolutions only (its depthwise ones in
# fp32 too: on the generated products the product FastFlow's largest int8-to-fp32 score difference falls from
# 0.29-0.38 of the fp32 score range to 0.04, at 1.1-1.2x fp32's speed instead of the whole graph's 1.8-2.2x;
# BENCHMARKS.md "int8: quantisation settings").
INT8_SCOPES = ("graph", "backbone", "dense")
SCOPE_NAMES = {"graph": "the graph", "backbone": "the backbone", "dense": "the dense convolutions"}  # in messages
DEPTHWISE = "GroupConvolution"  # OpenVINO's operation for grouped (here: depthwise) convolutions
# The model's own scoring after the backbone, by the names the ONNX trace gives its operations (``/scorer/...`` but
# not ``/scorer/backbone/...``; a graph that ends at the embedding has none): NNCF's ignored-scope pattern.
OUTSIDE_BACKBONE = r"^/scorer/(?!backbone/).*"


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


def _outside_backbone(model: Any) -> list[str]:
    """The weighted operations of a graph that are not in the scorer's backbone (the model's own scoring)."""
    weighted = {"Convolution", "GroupConvolution", "MatMul"}
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in weighted and re.match(OUTSIDE_BACKBONE, op.get_friendly_name())
    ]


def scope_differs(model: Any, scope: str) -> bool:
    """Whether a scope keeps anything in fp32 that the scope before it quantised (else it is the same graph)."""
    if scope == "backbone":
        return bool(_outside_backbone(model))
    if scope == "dense":
        return any(
            op.get_type_name() == DEPTHWISE and not re.match(OUTSIDE_BACKBONE, op.get_friendly_name())
            for op in model.get_ordered_ops()
        )
    return True


def int8_ignored_scope(nncf: Any, scope: str) -> Any:
    """NNCF's ignored scope for one of :data:`INT8_SCOPES` (None for ``graph``: nothing is kept in fp32).

    Args:
        nncf: The imported ``nncf`` module.
        scope: ``graph``, ``backbone`` (the model's own scoring after the backbone stays fp32) or ``dense`` (the
            backbone's depthwise convolutions stay fp32 too).

    Returns:
        An ``nncf.IgnoredScope`` or None.
    """
    if scope == "graph":
        return None
    types = [DEPTHWISE] if scope == "dense" else []
    return nncf.IgnoredScope(patterns=[OUTSIDE_BACKBONE], types=types, validate=False)


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
        scope: ``graph`` (every operation NNCF quantises), ``backbone`` (the model's own scoring after the
            backbone stays fp32) or ``dense`` (the backbone's depthwise convolutions stay fp32 too).

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

        ignored = int8_ignored_scope(nncf, scope)
        options: dict[str, Any] = {} if ignored is None else {"ignored_scope": ignored}
        dataset = nncf.Dataset(files, lambda path: model_pixels(read_image(path), size)[None])
        return nncf.quantize(
            model, dataset, subset_size=len(files), preset=nncf.QuantizationPreset.PERFORMANCE, **options
        )
