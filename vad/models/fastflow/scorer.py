"""FastFlow's scoring in plain torch: the saved per-stage norms and flows on the backbone graph."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vad.models.fastflow.flow_steps import run_flow, step_from_state
from vad.models.scorer import GraphScorer
from vad.models.spec import ModelSpec

CLAMP = 2.0  # anomalib's create_fast_flow_block default affine clamping (the model is built with it)


class FastflowScorer(GraphScorer):
    """Each stage's features normalised and mapped by its flow; the map is the mean of -exp(-|z|^2 / 2)."""

    def __init__(self, spec: ModelSpec, backbone: nn.Module, norms: nn.ModuleList, flows: list[list]) -> None:
        super().__init__(spec, backbone)
        self.norms = norms.to(memory_format=torch.channels_last)
        self.flows = flows

    @classmethod
    def state_arguments(cls, spec: ModelSpec, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """See :meth:`GraphScorer.state_arguments`: each stage's norm and flow steps, rebuilt from their keys.

        Args:
            spec: The model's description.
            state: The model's state dict.

        Returns:
            ``norms`` and ``flows``.
        """
        norms, flows = nn.ModuleList(), []
        for stage in range(len(spec.layers)):
            weight = state[f"norms.{stage}.weight"]
            norm = nn.LayerNorm(list(weight.shape))
            norm.load_state_dict({"weight": weight, "bias": state[f"norms.{stage}.bias"]})
            norms.append(norm.requires_grad_(False))
            prefix = f"fast_flow_blocks.{stage}.module_list."
            count = len({key[len(prefix) :].split(".")[0] for key in state if key.startswith(prefix)})
            flows.append([step_from_state(state, f"{prefix}{i}.", CLAMP, torch.channels_last) for i in range(count)])
        return {"norms": norms, "flows": flows}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, 1, H, W), as the model computes them.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            Scores and maps.
        """
        maps = []
        for norm, steps, feature in zip(self.norms, self.flows, self.features(images), strict=True):
            hidden = run_flow(steps, norm(feature))
            probability = torch.exp(-torch.mean(hidden**2, dim=1, keepdim=True) * 0.5)
            maps.append(
                F.interpolate(-probability, size=tuple(self.spec.input_size), mode="bilinear", align_corners=False)
            )
        anomaly_map = torch.mean(torch.stack(maps, dim=-1), dim=-1)
        return torch.amax(anomaly_map, dim=(-2, -1)).reshape(-1), anomaly_map  # -1: a free batch when exported
