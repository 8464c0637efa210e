"""FastFlow's flow blocks rearranged: the same hidden variables and Jacobians with less work.

anomalib's ``AllInOneBlock`` permutes channels after each coupling step with a 1x1 convolution by a
permutation matrix (as much arithmetic per step as a dense C x C layer, forward and backward),
computes a Jacobian that scoring never reads, and makes a separate pass for every elementwise
operation.

- Scoring (:func:`prepare_flow`, :func:`run_flow`): each step runs the subnet's first convolution,
  its last convolution split into the scale and shift halves (with anomalib's 0.1 factor folded into
  their weights, so both halves come out contiguous), the affine coupling in three in-place passes,
  and the permutation as a gather with the global affine applied after it; no Jacobian. An exported graph
  (ONNX, and OpenVINO from it) holds the permutation and the affine as one 1x1 convolution instead: graph
  runtimes run that far faster than a gather (see :func:`_permute_affine`).
- Training (:func:`train_flow`): the block's own parameters with autograd, the permutation as an
  index selection and the coupling's multiply-add in one operation.

Both match anomalib's outputs (and, for training, gradients) within float rounding (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

if TYPE_CHECKING:
    from anomalib.models.components.flow.all_in_one_block import AllInOneBlock

COUPLING_SCALE = 0.1  # anomalib multiplies the subnet output by this before the coupling
T = TypeVar("T")


@dataclass(frozen=True)
class _Step:
    """One coupling step prepared for scoring."""

    split: int  # channels passed through unchanged (the subnet's input)
    first: nn.Conv2d  # the subnet's first convolution (ReLU follows)
    scale_weight: torch.Tensor  # last convolution, scale half, times COUPLING_SCALE
    scale_bias: torch.Tensor
    shift_weight: torch.Tensor  # last convolution, shift half, times COUPLING_SCALE
    shift_bias: torch.Tensor
    padding: str | tuple[int, ...]
    clamp: float
    permutation: torch.Tensor  # output channel j takes input channel permutation[j]
    global_scale: torch.Tensor  # global affine scale and offset, already permuted
    global_offset: torch.Tensor


def _all_or_none(items: list[T | None]) -> list[T] | None:
    """The items if there are some and none is None (every step of a block has a fast form), else None."""
    present = [item for item in items if item is not None]
    return present if items and len(present) == len(items) else None


def _coupling_steps(block: nn.Module) -> list[AllInOneBlock] | None:
    """The steps of a FastFlow block (anomalib's ``SequenceINN``), or None if one is not an ``AllInOneBlock``."""
    from anomalib.models.components.flow.all_in_one_block import AllInOneBlock  # loaded with the block's model

    steps = list(getattr(block, "module_list", []))
    found = [step for step in steps if isinstance(step, AllInOneBlock)]
    return found if len(found) == len(steps) else None


def _hard_permutation(weight: torch.Tensor) -> torch.Tensor | None:
    """The index form of a permutation-matrix weight, or None if it is not one."""
    matrix = weight.reshape(weight.shape[0], -1)
    if matrix.shape[0] != matrix.shape[1]:
        return None
    index = matrix.argmax(dim=1)
    if not torch.equal(matrix, F.one_hot(index, matrix.shape[1]).to(matrix.dtype)):
        return None
    return index


def _step_permutation(step: AllInOneBlock) -> torch.Tensor | None:
    """The permutation index of a plain coupling step (hard permutation, no GIN, Householder or condition)."""
    plain = not (
        getattr(step, "GIN", True)
        or getattr(step, "householder", True)
        or getattr(step, "reverse_pre_permute", True)
        or getattr(step, "conditional", True)
    )
    weight = getattr(step, "w_perm", None)
    return _hard_permutation(weight) if plain and weight is not None else None


def _prepare_step(step: AllInOneBlock) -> _Step | None:
    """A scoring form of one anomalib ``AllInOneBlock``, or None for a configuration it does not cover."""
    subnet = getattr(step, "subnet", None)
    permutation = _step_permutation(step)
    if permutation is None or not isinstance(subnet, nn.Sequential) or len(subnet) != 3:
        return None
    first, activation, last = subnet
    if not (isinstance(first, nn.Conv2d) and isinstance(activation, nn.ReLU) and isinstance(last, nn.Conv2d)):
        return None
    if last.bias is None or last.groups != 1 or tuple(last.stride) != (1, 1):
        return None
    split, half = step.splits
    with torch.no_grad():
        weight, bias = last.weight * COUPLING_SCALE, last.bias * COUPLING_SCALE
        scale = step.global_scale_activation(step.global_scale).reshape(-1)[permutation]
        offset = step.global_offset.reshape(-1)[permutation]
    layout = torch.channels_last if last.weight.is_contiguous(memory_format=torch.channels_last) else None
    return _Step(
        split=split,
        first=first,
        scale_weight=weight[:half].contiguous(memory_format=layout or torch.contiguous_format),
        scale_bias=bias[:half].contiguous(),
        shift_weight=weight[half:].contiguous(memory_format=layout or torch.contiguous_format),
        shift_bias=bias[half:].contiguous(),
        padding=last.padding,
        clamp=float(step.clamp),
        permutation=permutation,
        global_scale=scale.contiguous(),
        global_offset=offset.contiguous(),
    )


def softplus_scale(global_scale: torch.Tensor) -> torch.Tensor:
    """Anomalib's global affine scale activation (``SOFTPLUS``, its default): ``0.1 * softplus(a, beta=0.5)``.

    Args:
        global_scale: The block's ``global_scale`` parameter.

    Returns:
        The scale.
    """
    return 0.1 * F.softplus(global_scale, beta=0.5)


def step_from_state(state: dict[str, torch.Tensor], prefix: str, clamp: float, layout: torch.memory_format) -> _Step:
    """The scoring form of one saved coupling step, from the block's state-dict tensors alone (no FrEIA module).

    Args:
        state: The model's state dict.
        prefix: The step's key prefix, e.g. ``fast_flow_blocks.0.module_list.3.``.
        clamp: The block's affine clamping.
        layout: Memory format of the convolution weights.

    Returns:
        The step.

    Raises:
        ValueError: The step's permutation is not a hard permutation.
    """
    first_weight, first_bias = state[f"{prefix}subnet.0.weight"], state[f"{prefix}subnet.0.bias"]
    kernel = (first_weight.shape[-2], first_weight.shape[-1])
    first = nn.Conv2d(first_weight.shape[1], first_weight.shape[0], kernel, padding="same")
    first.load_state_dict({"weight": first_weight, "bias": first_bias})
    first.requires_grad_(False).to(memory_format=layout)
    weight = state[f"{prefix}subnet.2.weight"] * COUPLING_SCALE
    bias = state[f"{prefix}subnet.2.bias"] * COUPLING_SCALE
    half = weight.shape[0] // 2
    permutation = _hard_permutation(state[f"{prefix}w_perm"])
    if permutation is None:
        msg = f"{prefix}w_perm is not a permutation"
        raise ValueError(msg)
    scale = softplus_scale(state[f"{prefix}global_scale"]).reshape(-1)[permutation]
    return _Step(
        split=scale.numel() - half,
        first=first,
        scale_weight=weight[:half].contiguous(memory_format=layout),
        scale_bias=bias[:half].contiguous(),
        shift_weight=weight[half:].contiguous(memory_format=layout),
        shift_bias=bias[half:].contiguous(),
        padding="same",
        clamp=clamp,
        permutation=permutation,
        global_scale=scale.contiguous(),
        global_offset=state[f"{prefix}global_offset"].reshape(-1)[permutation].contiguous(),
    )


def _permute_affine(z: torch.Tensor, step: _Step) -> torch.Tensor:
    """``global_scale * z + global_offset``, channels permuted (anomalib's ``_permute``), layout kept."""
    batch, channels, height, width = z.shape
    if torch.onnx.is_in_onnx_export():
        # an exported graph permutes with a 1x1 convolution by the permutation matrix times the global scale: the
        # gather form became GatherElements (a reference kernel) between layout reorders in OpenVINO, 45% of the
        # int8 ResNet-18 FastFlow's time; as a convolution that graph ran 59.6 against 27.7 images/s (fp32 23.1
        # against 17.2, ONNX Runtime 21.2 against 19.2), with the same outputs
        matrix = np.zeros((channels, channels, 1, 1), dtype=np.float32)  # from numpy: a constant of the trace
        matrix[np.arange(channels), step.permutation.numpy(), 0, 0] = step.global_scale.reshape(-1).numpy()
        offset = torch.from_numpy(step.global_offset.reshape(-1).numpy().copy())
        return F.conv2d(z, torch.from_numpy(matrix), offset)
    if z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous():
        rows = z.permute(0, 2, 3, 1).reshape(-1, channels)  # (pixels, channels), no copy
        gathered = torch.gather(rows, 1, step.permutation.expand(rows.shape[0], channels))
        out = torch.addcmul(step.global_offset, gathered, step.global_scale)
        return out.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
    gathered = torch.index_select(z, 1, step.permutation)
    shape = (1, channels, 1, 1)
    return torch.addcmul(step.global_offset.reshape(shape), gathered, step.global_scale.reshape(shape))


def _run_step(x: torch.Tensor, step: _Step) -> torch.Tensor:
    """One coupling step's output (anomalib's ``AllInOneBlock.forward`` without the Jacobian)."""
    passive, active = x[:, : step.split], x[:, step.split :]
    hidden = torch.relu_(step.first(passive))
    log_scale = torch.tanh_(F.conv2d(hidden, step.scale_weight, step.scale_bias, padding=step.padding))
    factor = log_scale.mul_(step.clamp).exp_()
    shift = F.conv2d(hidden, step.shift_weight, step.shift_bias, padding=step.padding)
    coupled = torch.addcmul(shift, active, factor)
    return _permute_affine(torch.cat([passive, coupled], dim=1), step)


def prepare_flow(block: nn.Module) -> list[_Step] | None:
    """The scoring form of a FastFlow block (anomalib's ``SequenceINN`` of ``AllInOneBlock``).

    Args:
        block: One of ``FastflowModel.fast_flow_blocks``.

    Returns:
        The prepared steps, or None when a step has a form this module does not cover (then the
        block itself must be run).
    """
    steps = _coupling_steps(block)
    return None if steps is None else _all_or_none([_prepare_step(step) for step in steps])


def run_flow(steps: list[_Step], features: torch.Tensor) -> torch.Tensor:
    """The hidden variable of a block for scoring (no gradients, no Jacobian).

    Args:
        steps: From :func:`prepare_flow`.
        features: The block's input (B, C, H, W).

    Returns:
        The hidden variable, shape of ``features``.
    """
    channels_last = steps[0].scale_weight.is_contiguous(memory_format=torch.channels_last)
    x = features.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for step in steps:
        x = _run_step(x, step)
    return x


def _train_step(step: AllInOneBlock, x: torch.Tensor, permutation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden variable and log-Jacobian of anomalib's ``AllInOneBlock.forward``, permuting by index."""
    split, half = step.splits
    passive, active = x[:, :split], x[:, split:]
    coefficients = step.subnet(passive) * COUPLING_SCALE
    log_scale = step.clamp * torch.tanh(coefficients[:, :half])
    coupled = torch.addcmul(coefficients[:, half:], active, torch.exp(log_scale))
    scale = step.global_scale_activation(step.global_scale)
    z = torch.index_select(torch.cat([passive, coupled], dim=1), 1, permutation)
    out = torch.addcmul(step.global_offset[:, permutation], z, scale[:, permutation])
    pixels = out[0, :1].numel()
    return out, torch.sum(log_scale, dim=(1, 2, 3)) + pixels * torch.sum(torch.log(scale))


def train_flow(block: nn.Module, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A FastFlow block's hidden variable and log-Jacobian, differentiable, as ``block(features)`` gives them.

    Args:
        block: One of ``FastflowModel.fast_flow_blocks``.
        features: The block's input (B, C, H, W).

    Returns:
        (hidden variable, log-Jacobian per image), or None when a step has a form this module does
        not cover (then the block itself must be run).
    """
    steps = _coupling_steps(block)
    permutations = None if steps is None else _all_or_none([_step_permutation(step) for step in steps])
    if steps is None or permutations is None:
        return None
    x, log_jacobian = features, torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
    for step, permutation in zip(steps, permutations, strict=True):
        x, step_jacobian = _train_step(step, x, permutation)
        log_jacobian = log_jacobian + step_jacobian
    return x, log_jacobian
