"""The scoring graph of a trained model, traced to ONNX: model-size uint8 pixels in, raw scores and maps out.

The graph (:class:`ScoringGraph`) computes, inside: the normalisation, the backbone (torch's batch-norm-folded
graph), the model's scoring (each scorer's :meth:`graph_forward`) and the raw image score and anomaly map. It is
traced to ONNX once; OpenVINO's graph is converted from it (:mod:`vad.export.writer`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vad.export.runtime import DESCRIPTOR_NAME, EMBEDDING_NAME, INPUT_NAME, OUTPUT_NAMES
from vad.models.scorer import GraphScorer
from vad.ood.descriptor import descriptor_tap, global_descriptor

OPSET = 17


class ScoringGraph(nn.Module):
    """Model-size uint8 pixels (B, H, W, 3) to raw image scores (B,), raw anomaly maps (B, H, W) and descriptors.

    For a scorer with a ``TAIL`` (PatchCore), to its embedding instead of scores and maps: the numpy tail scores
    it. The last output is the out-of-distribution descriptor (:mod:`vad.ood.descriptor`).
    """

    def __init__(self, scorer: GraphScorer, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.scorer = scorer
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 1, 1, 3))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 1, 1, 3))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Scores and maps (or the tail's embedding) and descriptors, as the torch runtime computes them.

        Args:
            pixels: uint8 (B, H, W, 3).

        Returns:
            Scores (B,) and maps (B, H, W), or the embedding; then the descriptors (B, D).
        """
        images = ((pixels.float() / 255.0 - self.mean) / self.std).permute(0, 3, 1, 2)
        with descriptor_tap() as tapped:
            if self.scorer.TAIL is not None:
                outputs: tuple[torch.Tensor, ...] = (self.scorer.graph_embedding(images),)
            else:
                scores, maps = self.scorer.graph_forward(images)
                outputs = (scores.reshape(-1), maps.reshape(maps.shape[0], maps.shape[-2], maps.shape[-1]))
        descriptor = tapped[0] if len(tapped) == 1 else global_descriptor(self.scorer.features(images))
        return (*outputs, descriptor)


def onnx_bytes(
    scorer: GraphScorer, mean: Sequence[float], std: Sequence[float], size: tuple[int, int]
) -> tuple[bytes, dict[str, np.ndarray] | None]:
    """The scoring graph of a scorer as ONNX (batch size free), and its tail's arrays when it has one.

    Args:
        scorer: A loaded scorer (CPU, eval).
        mean: Normalisation mean.
        std: Normalisation standard deviation.
        size: Input (height, width).

    Returns:
        The ONNX model, and the tail's arrays or None.
    """
    graph = ScoringGraph(scorer, mean, std).eval()
    example = torch.zeros(2, *size, 3, dtype=torch.uint8)
    buffer = io.BytesIO()
    outputs = [EMBEDDING_NAME] if scorer.TAIL is not None else list(OUTPUT_NAMES)
    outputs.append(DESCRIPTOR_NAME)
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]}
    with torch.inference_mode():
        warm = graph(example)  # operators a scorer builds on first use (PatchCore's blur) are trace constants
        tail = scorer.tail_arrays(warm[0]) if scorer.TAIL is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter says a newer one exists
        # torch annotates the target as a path only; its TorchScript exporter (dynamo=False) writes to a file object
        torch.onnx.export(
            graph, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],  # type: ignore[arg-type]
            output_names=outputs, dynamic_axes=axes,
        )  # fmt: skip
    return buffer.getvalue(), tail
