"""Scorers: a loaded model's scoring arithmetic in plain torch, on the backbone graph saved with it.

They read the model's own saved state (anomalib's state dict) and the backbone graph
(:mod:`vad.models.graph`), and import neither timm nor anomalib, so a process that only
scores starts in a fraction of the time. Each model's scorer sits in its folder (``scorer.py``) and
is tested to give the scores of the model itself.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import nn

from vad.models.maps import as_arrays
from vad.models.ort_backbone import OrtBackbone, ort_backbone
from vad.models.spec import ModelSpec
from vad.ood.descriptor import descriptor_tap, global_descriptor, tap


def in_graph_runtime(images: torch.Tensor) -> bool:
    """Whether a batch may go through a prepared ONNX Runtime graph: on the CPU, and not while exporting.

    Args:
        images: The batch.

    Returns:
        True when it may.
    """
    return images.device.type == "cpu" and not torch.onnx.is_in_onnx_export()


class GraphScorer(nn.Module):
    """Base of the scorers: the backbone graph in channels-last layout, and ``score`` as models have it."""

    def __init__(self, spec: ModelSpec, backbone: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone.to(memory_format=torch.channels_last).eval()
        self.runtime: OrtBackbone | None = None  # the backbone in ONNX Runtime, set by :meth:`prepare`

    @classmethod
    def supports(cls, spec: ModelSpec) -> bool:
        """Whether this scorer computes what the model with this spec computes (else the model itself scores).

        Args:
            spec: The model's description.

        Returns:
            True when it does.
        """
        del spec
        return True

    STATE_KEYS: ClassVar[dict[str, str]] = {}  # constructor argument -> the model's state-dict key it is read from

    @classmethod
    def from_state(cls, spec: ModelSpec, state: dict[str, torch.Tensor], backbone: nn.Module) -> Self:
        """Build the scorer from the model's saved state: ``cls(spec, backbone, **state_arguments(...))``.

        Args:
            spec: The model's description.
            state: The model's state dict (``model.safetensors``).
            backbone: The backbone graph.

        Returns:
            The scorer, in eval mode.
        """
        return cls(spec, backbone, **cls.state_arguments(spec, state)).eval()

    @classmethod
    def state_arguments(cls, spec: ModelSpec, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The constructor's arguments after the spec and the backbone, from the saved state (a hook).

        The default reads :attr:`STATE_KEYS`; a scorer whose arguments are built from many keys overrides it.

        Args:
            spec: The model's description.
            state: The model's state dict.

        Returns:
            Argument name -> value.
        """
        del spec
        return {argument: state[key] for argument, key in cls.STATE_KEYS.items()}

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's feature maps of a batch.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            One map per layer.
        """
        if self.runtime is not None and in_graph_runtime(images):
            found = list(self.runtime(images))
        else:
            found = list(self.backbone(images.to(self.device).contiguous(memory_format=torch.channels_last)))
        tap(found)  # the out-of-distribution descriptor, where a caller collects it
        return found

    @property
    def device(self) -> torch.device:
        """Where the scorer's weights are."""
        return next(self.backbone.parameters()).device

    def prepare(self) -> None:
        """On the CPU, run the backbone in ONNX Runtime when it gives torch's features (see :mod:`.ort_backbone`)."""
        if self.device.type == "cpu":
            self.runtime = ort_backbone(self.backbone, self.spec.input_size, torch.get_num_threads())

    TAIL: str | None = None  # the model whose registered tail follows the exported graph (None: the graph scores)

    def graph_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """What an exported graph outputs for a scorer with a ``TAIL``: the tail's input (a hook).

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            The tail's input.
        """
        raise NotImplementedError

    def tail_arrays(self, embedding: torch.Tensor) -> dict[str, np.ndarray]:
        """The arrays the exported tail needs, for the embedding of an example batch (a hook).

        Args:
            embedding: :meth:`graph_embedding` of an example batch.

        Returns:
            Name -> array.
        """
        raise NotImplementedError

    def graph_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores and maps in operations an exported graph can hold (a hook: :mod:`.export` traces it).

        The default is :meth:`forward`; a scorer whose forward searches outside torch overrides it.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            Scores (B,) and maps (B, 1, H, W).
        """
        return self(images)

    def scores_and_maps(self, images: torch.Tensor, maps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image scores and, on request, anomaly maps of a batch (a hook: a scorer may skip the maps' work).

        Args:
            images: Normalised images (B, 3, H, W).
            maps: Whether the maps are wanted.

        Returns:
            Scores (B,) and maps (B, 1, H, W) or None.
        """
        scores, found = self(images)
        return scores, found if maps else None

    def score(self, images: torch.Tensor, maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw image scores and raw anomaly maps of a batch (as :meth:`VadModel.score`).

        Args:
            images: Normalised images (B, 3, H, W).
            maps: Whether the maps are wanted (else None).

        Returns:
            Scores (B,) and maps (B, H, W) or None, float32 arrays.
        """
        with torch.inference_mode():
            return as_arrays(*self.scores_and_maps(images, maps))

    def score_described(
        self, images: torch.Tensor, maps: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """:meth:`score` and each image's out-of-distribution descriptor, from the same backbone pass.

        Args:
            images: Normalised images (B, 3, H, W).
            maps: Whether the maps are wanted (else None).

        Returns:
            Scores (B,), maps (B, H, W) or None, and descriptors (B, D) float32.
        """
        with descriptor_tap() as tapped:
            scores, found = self.score(images, maps)
        if len(tapped) != 1:  # every scorer reads its features once a batch; one that did not is described apart
            with torch.inference_mode():
                tapped = [global_descriptor(self.features(images))]
        return scores, found, tapped[0].float().cpu().numpy()
