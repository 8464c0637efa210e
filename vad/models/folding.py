"""Batch-norm folding for frozen CNN backbones: the same features with one pass less per convolution.

A frozen backbone in eval mode applies each BatchNorm as a fixed per-channel affine map, which
can be merged into the weights and bias of the convolution feeding it. In eager PyTorch the
BatchNorm is a separate pass over every feature map: on this 2-core CPU it is 36% of MobileNetV2's
time to ``blocks.4`` and 11% of ResNet-18's to ``layer3`` (torch profiler). The folded copy is used
for scoring and feature extraction only; the model's own modules and state dict stay anomalib's.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

logger = logging.getLogger("assets.folding")

# Largest difference from the unfolded features, relative to their largest magnitude, that counts as the same.
FOLD_TOLERANCE = 1e-4


def _bn_replacement(norm: nn.BatchNorm2d) -> nn.Module | None:
    """What a folded BatchNorm becomes: nothing, or its activation (timm's ``BatchNormAct2d``)."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    drop, act = getattr(norm, "drop", None), getattr(norm, "act", None)  # timm BatchNormAct2d: batch_norm, drop, act
    if isinstance(drop, nn.Module) and isinstance(act, nn.Module):
        return nn.Sequential(drop, act)
    return None


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) pairs where the BatchNorm's input is the convolution's output.

    Found by running ``example`` once with hooks: a BatchNorm pairs with the convolution whose output
    tensor it receives. Whether nothing else reads that output is checked afterwards by comparing
    features (:func:`fold_batch_norms`).
    """
    produced: dict[int, str] = {}
    kept: list[torch.Tensor] = []  # keeps outputs alive so their ids stay unique during the pass
    pairs: list[tuple[str, str]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):

            def remember(_module: nn.Module, _inputs: tuple, output: torch.Tensor, name: str = name) -> None:
                produced[id(output)] = name
                kept.append(output)

            handles.append(module.register_forward_hook(remember))
        elif isinstance(module, nn.BatchNorm2d):

            def pair(_module: nn.Module, inputs: tuple, name: str = name) -> None:
                source = produced.get(id(inputs[0]))
                if source is not None:
                    pairs.append((source, name))

            handles.append(module.register_forward_pre_hook(pair))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def _fold_pair(conv: nn.Conv2d, norm: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Merge an eval-mode BatchNorm's affine map (its running ``mean`` and ``var``) into the convolution before it."""
    with torch.no_grad():
        factor = norm.weight / torch.sqrt(var + norm.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
        conv.weight.mul_(factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        conv.bias = nn.Parameter((bias - mean) * factor + norm.bias, requires_grad=False)


def _flat(outputs: object) -> list[torch.Tensor]:
    """The tensors of a backbone output (a tensor, a list or tuple of them, or a dict of them)."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return list(outputs.values())
    if isinstance(outputs, list | tuple):
        return list(outputs)
    msg = f"a backbone output is a tensor, a list, a tuple or a dict of tensors, not {type(outputs).__name__}"
    raise TypeError(msg)


def fold_batch_norms(backbone: nn.Module, example: torch.Tensor) -> nn.Module:
    """An eval-mode copy of a frozen backbone with each BatchNorm folded into the convolution feeding it.

    Pairs come from one traced pass over ``example``; a BatchNorm whose type is unknown, which has
    no running statistics or whose input is not a convolution's output stays as it is. The copy's
    features on ``example`` are compared with the original's; if they differ by more than
    :data:`FOLD_TOLERANCE` (a convolution output read by something besides its BatchNorm), the
    unfolded copy is returned.

    Args:
        backbone: The frozen backbone (not modified).
        example: An input batch of the backbone's shape, e.g. one random image.

    Returns:
        The folded copy, in eval mode, parameters without gradients.
    """
    original = copy.deepcopy(backbone).eval()
    folded = copy.deepcopy(backbone).eval()
    for parameter in [*original.parameters(), *folded.parameters()]:
        parameter.requires_grad = False
    modules = dict(folded.named_modules())
    count = 0
    for conv_name, norm_name in _conv_bn_pairs(folded, example):
        conv, norm = modules[conv_name], modules[norm_name]
        if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)):  # as the pairs were found
            continue
        mean, var, replacement = norm.running_mean, norm.running_var, _bn_replacement(norm)
        if replacement is None or mean is None or var is None:
            continue
        _fold_pair(conv, norm, mean, var)
        parent_name, _, child = norm_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else folded, child, replacement)
        count += 1
    with torch.no_grad():
        expected, actual = _flat(original(example)), _flat(folded(example))
    scale = max(float(t.abs().max()) for t in expected) or 1.0
    error = max(float((a - e).abs().max()) for a, e in zip(actual, expected, strict=True)) / scale
    if error > FOLD_TOLERANCE:
        logger.warning(f"batch-norm folding changed features by {error:.2g} (relative); using the unfolded backbone")
        return original
    logger.debug(f"folded {count} batch norms (relative difference {error:.2g})")
    return folded
