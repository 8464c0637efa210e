"""Anomaly-map arithmetic shared by the models and their scorers (plain torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def separable_blur(maps: torch.Tensor, kernel: torch.Tensor, border: str = "reflect") -> torch.Tensor:
    """Anomalib's ``GaussianBlur2d`` (``same`` padding) as one vertical and one horizontal 1-D pass.

    A Gaussian kernel is the outer product of two normalised 1-D kernels, so the two passes over the same
    padded map give the values of the full 2-D convolution with a fraction of the taps.

    Args:
        maps: Maps (B, C, H, W).
        kernel: anomalib's kernel buffer (C, 1, kh, kw) or (1, 1, kh, kw), odd sizes.
        border: Padding mode.

    Returns:
        Blurred maps of the same shape.
    """
    channels = maps.shape[1]
    square = kernel[:1, 0]  # (1, kh, kw)
    height, width = square.shape[-2:]
    column = square.sum(dim=2).reshape(1, 1, -1, 1).expand(channels, -1, -1, -1).to(maps.dtype)
    row = square.sum(dim=1).reshape(1, 1, 1, -1).expand(channels, -1, -1, -1).to(maps.dtype)
    padded = F.pad(maps, [(width - 1) // 2, width // 2, (height - 1) // 2, height // 2], mode=border)
    return F.conv2d(F.conv2d(padded, column, groups=channels), row, groups=channels)


def concat_layers(features: list[torch.Tensor], mode: str) -> torch.Tensor:
    """Feature maps of several layers resized to the first one's size and concatenated (anomalib's embedding).

    Args:
        features: (B, C_i, H_i, W_i) per layer, the first the largest.
        mode: Interpolation of the deeper layers (PatchCore ``bilinear``, PaDiM ``nearest``).

    Returns:
        (B, sum C_i, H_0, W_0).
    """
    size = features[0].shape[-2:]
    return torch.cat([features[0], *(F.interpolate(f, size=size, mode=mode) for f in features[1:])], dim=1)
