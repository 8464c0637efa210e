"""The scoring backbone run by ONNX Runtime on the CPU: the same fp32 features, faster than torch's forward.

The saved, batch-norm-folded backbone graph is exported to ONNX in memory when a model is loaded (about 0.3 s)
and run by ONNX Runtime's CPU provider. Its features are checked against torch's on a fixed example before it
is used; when they differ by more than :data:`MAX_RELATIVE_DIFFERENCE`, or ONNX Runtime is not installed, or
the export fails, torch's forward stays (logged). BENCHMARKS.md ("Speed: the scoring backbone in ONNX Runtime")
has the speed.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Protocol

import numpy as np
import torch
from torch import nn

logger = logging.getLogger("assets.models.ort_backbone")

MAX_RELATIVE_DIFFERENCE = 1e-4  # largest feature difference accepted, relative to the largest feature value
OPSET = 17


class OrtSession(Protocol):
    """What the backbone uses of an ``onnxruntime.InferenceSession`` (onnxruntime ships no type hints)."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs (all of them for None) on the inputs."""
        ...


class OrtBackbone:
    """A backbone graph as an ONNX Runtime session: images (B, 3, H, W) in, its feature maps out."""

    def __init__(self, session: OrtSession) -> None:
        self.session = session

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps of a batch.

        Args:
            images: Normalised images (B, 3, H, W), on the CPU.

        Returns:
            One map per layer, as torch tensors.
        """
        array = np.ascontiguousarray(images.detach().float().numpy())
        return [torch.from_numpy(found) for found in self.session.run(None, {"images": array})]


def _export(graph: nn.Module, example: torch.Tensor, outputs: int) -> bytes:
    names = [f"features_{i}" for i in range(outputs)]
    axes = {name: {0: "batch"} for name in ["images", *names]}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter warns that a newer one exists
        warnings.simplefilter("ignore")
        # torch annotates the target as a path only; its TorchScript exporter (dynamo=False) writes to a file object
        torch.onnx.export(
            graph, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["images"],  # type: ignore[arg-type]
            output_names=names, dynamic_axes=axes,
        )  # fmt: skip
    return buffer.getvalue()


def ort_backbone(graph: nn.Module, input_size: tuple[int, int], threads: int) -> OrtBackbone | None:
    """The graph as an ONNX Runtime session when that gives torch's features, else None (torch keeps scoring).

    Args:
        graph: The backbone graph (on the CPU, eval mode).
        input_size: Model input (height, width).
        threads: Intra-op threads of the session.

    Returns:
        The session wrapper, or None.
    """
    try:
        import onnxruntime
    except ImportError:
        return None
    example = torch.randn(2, 3, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = list(graph(example.contiguous(memory_format=torch.channels_last)))
    try:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # torch scores next: no spinning
        model = _export(graph, example, len(expected))
        backbone = OrtBackbone(onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"]))
        found = backbone(example)
    except Exception as exc:  # an exporter or runtime that cannot take this graph: torch scores
        logger.warning(f"ONNX Runtime backbone not used ({exc.__class__.__name__}: {str(exc)[:120]}); torch scores")
        return None
    scale = max(float(f.abs().max()) for f in expected) or 1.0
    shapes_match = [f.shape for f in found] == [e.shape for e in expected]
    worst = (
        max(float((a - b).abs().max()) for a, b in zip(expected, found, strict=False)) / scale if shapes_match else 1.0
    )
    if worst > MAX_RELATIVE_DIFFERENCE:
        logger.warning(
            f"ONNX Runtime backbone not used: its features differ by {worst:.2e} of their range; torch scores"
        )
        return None
    logger.debug(f"backbone runs in ONNX Runtime (features within {worst:.1e} of torch's)")
    return backbone
