"""Anomaly-map arithmetic shared by the models and their scorers (plain torch)."""

from __future__ import annotations

import numpy as np
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


def as_arrays(scores: torch.Tensor, maps: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch's scores and maps as float32 arrays, (B,) and (B, H, W) or None.

    Args:
        scores: Image scores, any shape with B values.
        maps: Maps (B, 1, H, W) or (B, H, W), or None.

    Returns:
        The arrays.
    """
    scores_array = scores.reshape(-1).float().cpu().numpy()
    if maps is None:
        return scores_array, None
    return scores_array, maps.reshape(len(scores_array), *maps.shape[-2:]).float().cpu().numpy()


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


class UpsampleBlur:
    """A patch-score grid upsampled (``F.interpolate``) and blurred (:func:`separable_blur`) as two small products.

    Both steps are linear and act on rows and columns separately, so a map is ``K_h @ S @ K_w.T`` for a
    patch grid ``S`` (h x w) and fixed matrices ``K_h`` (H x h) and ``K_w`` (W x w), built once by running
    the real interpolation and padded 1-D blur on identity signals (same rounding rules, same borders).
    At 256 px from a 32 x 32 grid that is about 2 MMAC per map instead of the interpolation and two 33-tap
    convolutions over the full map (40x less time on this CPU). The 0/1 supports of the matrices tell which
    patches a pixel depends on (:meth:`patches_of`) and which pixels a patch reaches (:meth:`pixels_of`).
    """

    def __init__(
        self,
        grid: tuple[int, int],
        size: tuple[int, int],
        kernel: torch.Tensor,
        mode: str = "nearest",
        border: str = "reflect",
    ) -> None:
        """Build the operator.

        Args:
            grid: Patch grid (h, w).
            size: Map size (H, W).
            kernel: anomalib's blur kernel buffer (C, 1, kh, kw) or (1, 1, kh, kw).
            mode: The interpolation mode of the upsampling.
            border: The blur's padding mode.
        """
        square = kernel[:1, 0].double()
        self.rows = _axis_matrix(grid[0], size[0], square.sum(dim=2).reshape(-1), mode, border).to(kernel.device)
        self.columns_t = _axis_matrix(grid[1], size[1], square.sum(dim=1).reshape(-1), mode, border).T.contiguous()
        self.columns_t = self.columns_t.to(kernel.device)
        self.rows_reach = (self.rows > 0).float()
        self.columns_reach_t = (self.columns_t > 0).float()

    def __call__(self, grids: torch.Tensor) -> torch.Tensor:
        """Maps of patch grids.

        Args:
            grids: (B, h, w).

        Returns:
            (B, H, W), in the grids' dtype.
        """
        return self.rows.to(grids.dtype) @ grids @ self.columns_t.to(grids.dtype)

    def patches_of(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patches that some given pixel depends on.

        Args:
            pixels: (B, H, W) bool.

        Returns:
            (B, h, w) bool.
        """
        return (self.rows_reach.T @ pixels.float() @ self.columns_reach_t.T) > 0

    def pixels_of(self, patches: torch.Tensor) -> torch.Tensor:
        """Pixels that depend on some given patch.

        Args:
            patches: (B, h, w) bool.

        Returns:
            (B, H, W) bool.
        """
        return (self.rows_reach @ patches.float() @ self.columns_reach_t) > 0


def _axis_matrix(n_in: int, n_out: int, taps: torch.Tensor, mode: str, border: str) -> torch.Tensor:
    """One axis of :class:`UpsampleBlur`: blur (n_out x n_out) times upsampling (n_out x n_in), float32."""
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1)
    upsample = F.interpolate(basis, size=(n_out, 1), mode=mode).reshape(n_in, n_out).T  # column i: patch i
    width = taps.numel()
    identity = torch.eye(n_out, dtype=torch.float64).unsqueeze(1)
    padded = F.pad(identity, [(width - 1) // 2, width // 2], mode=border)
    blur = F.conv1d(padded, taps.reshape(1, 1, -1).to(torch.float64))[:, 0, :].T  # column j: the blur of pixel j
    return (blur @ upsample).float()
