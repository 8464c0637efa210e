"""PatchCore's scoring in plain torch (and faiss): the model's memory bank on the saved backbone graph."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vad.models.maps import concat_layers
from vad.models.ort_backbone import OrtBackbone, ort_backbone
from vad.models.patchcore import PatchcoreParams
from vad.models.patchcore.torch_tail import TorchTail
from vad.models.scorer import GraphScorer, in_graph_runtime
from vad.models.spec import ModelSpec
from vad.ood.descriptor import descriptor_tap, global_descriptor, tap_descriptor


class PatchcoreScorer(GraphScorer):
    """Nearest bank row of every patch, the map upsampled and blurred, its peak as the image score."""

    def __init__(
        self,
        spec: ModelSpec,
        backbone: nn.Module,
        bank: torch.Tensor,
        centroids: torch.Tensor,
        kernel: torch.Tensor,
        head: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(spec, backbone)
        self.bank: torch.Tensor
        self.kernel: torch.Tensor
        self.head_weights: torch.Tensor
        self.head_bias: torch.Tensor
        self.register_buffer("bank", bank)
        self.register_buffer("kernel", kernel)
        weights, bias = head if head is not None else (torch.empty(0), torch.empty(0))
        self.register_buffer("head_weights", weights)  # the supervised mode's head (empty: none)
        self.register_buffer("head_bias", bias)
        exact_only = spec.params_as(PatchcoreParams).search == "exact"
        self.bank_tail = TorchTail(bank, centroids, kernel, spec.input_size, head, exact_only)
        self.embedding_runtime: OrtBackbone | None = None  # backbone + embedding in ONNX Runtime (:meth:`prepare`)

    @classmethod
    def supports(cls, spec: ModelSpec) -> bool:
        """The map-peak image score only (models scoring with anomalib's re-weighting keep the model).

        Args:
            spec: The model's description.

        Returns:
            True for ``image_score: map_max``.
        """
        return spec.params_as(PatchcoreParams).image_score == "map_max"

    STATE_KEYS: ClassVar[dict[str, str]] = {
        "bank": "memory_bank",
        "centroids": "search_centroids",
        "kernel": "anomaly_map_generator.blur.kernel",
    }

    @classmethod
    def state_arguments(cls, spec: ModelSpec, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """See :meth:`GraphScorer.state_arguments`: the supervised head too, where the model has one.

        Args:
            spec: The model's description.
            state: The model's state dict (models saved before the supervised mode have no head).

        Returns:
            Argument name -> value.
        """
        head = (state["head_weights"], state["head_bias"]) if "head_weights" in state else None
        return super().state_arguments(spec, state) | {"head": head}

    def scores_and_maps(self, images: torch.Tensor, maps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """See :meth:`GraphScorer.scores_and_maps`: without maps, only the patches that can hold a peak are exact."""
        return self(images, maps)

    TAIL = "patchcore"

    def prepare(self) -> None:
        """On the CPU, run the backbone and the patch embedding as one ONNX Runtime graph when it gives torch's.

        The pooling, upsampling and concatenation in the graph too: 14% more images/s than the backbone alone.
        The bank's searches are built here too, so that no scoring call pays for them.
        """
        if self.device.type == "cpu":
            self.embedding_runtime = ort_backbone(_Embedding(self), self.spec.input_size, torch.get_num_threads())
            self.bank_tail.index  # noqa: B018 (built on first use: now)

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The patch embeddings (B, h, w, D), from ONNX Runtime when prepared.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            The embeddings.
        """
        if self.embedding_runtime is not None and in_graph_runtime(images):
            embedding, descriptor = self.embedding_runtime(images)
            tap_descriptor(descriptor)  # the graph's own: no second backbone pass for the OOD check
            return embedding
        return self.graph_embedding(images)

    def graph_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The patch embeddings (B, h, w, D) the exported graph outputs; the numpy tail searches the bank.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            The embeddings.
        """
        pooled = [F.avg_pool2d(feature, 3, 1, 1) for feature in self.features(images)]
        return concat_layers(pooled, "bilinear").permute(0, 2, 3, 1)

    def tail_arrays(self, embedding: torch.Tensor) -> dict[str, np.ndarray]:
        """The exported tail's arrays: the bank, its centroids (empty: exact search), the blur matrices, the head.

        Args:
            embedding: An example batch's embeddings (B, h, w, D).

        Returns:
            The arrays of :class:`~vad.models.patchcore.tail.PatchcoreTail` (:meth:`~.tail.PatchcoreTail.arrays`).
        """
        return self.bank_tail.tail((int(embedding.shape[1]), int(embedding.shape[2]))).arrays()

    def forward(self, images: torch.Tensor, maps: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image scores (B,) and anomaly maps (B, 1, H, W), as the model computes them (:class:`TorchTail`).

        Args:
            images: Normalised images (B, 3, H, W).
            maps: Compute the maps (else None, and only the patches that can hold each peak are searched
                exactly: :func:`~.peaks.peak_maps`).

        Returns:
            Scores and maps.
        """
        return self.bank_tail(self.embedding(images), maps)


class _Embedding(nn.Module):
    """A scorer's backbone and patch embedding as one module (what ONNX Runtime runs), and the OOD descriptor."""

    def __init__(self, scorer: PatchcoreScorer) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, descriptor)`` of a batch (the descriptor from the same feature maps)."""
        with descriptor_tap() as tapped:
            embedding = self.scorer.graph_embedding(images)
        return embedding, tapped[0] if len(tapped) == 1 else global_descriptor(self.scorer.features(images))
