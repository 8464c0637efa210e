"""The map operator and PatchCore's exact peaks from bounded distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from vad.models.maps import UpsampleBlur, separable_blur
from vad.models.patchcore.peaks import GridBlur, peak_maps


def gaussian_kernel(sigma: float = 4.0) -> torch.Tensor:
    size = 2 * int(4.0 * sigma + 0.5) + 1
    taps = torch.exp(-((torch.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    return torch.outer(taps, taps).reshape(1, 1, size, size)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize(("grid", "size"), [((8, 8), (64, 64)), ((5, 7), (40, 72)), ((12, 10), (50, 45))])
def test_upsample_blur_equals_interpolation_then_separable_blur(mode, grid, size):
    kernel = gaussian_kernel()
    patches = torch.rand(3, 1, *grid, generator=torch.Generator().manual_seed(0))
    expected = separable_blur(F.interpolate(patches, size=size, mode=mode), kernel)[:, 0]
    blur = UpsampleBlur(grid, size, kernel, mode)
    torch.testing.assert_close(blur(patches[:, 0]), expected, rtol=1e-5, atol=1e-6)
    # supports: a pixel depends on exactly the patches whose unit grid moves it
    pixel = torch.zeros(1, *size, dtype=torch.bool)
    pixel[0, size[0] // 2, size[1] // 3] = True
    depends = blur.patches_of(pixel)[0]
    for i in range(grid[0]):
        for j in range(grid[1]):
            unit = torch.zeros(1, *grid)
            unit[0, i, j] = 1.0
            moved = bool(blur(unit)[0, size[0] // 2, size[1] // 3] > 0)
            assert moved == bool(depends[i, j])
            assert torch.equal(blur.pixels_of(unit.bool())[0], blur(unit)[0] > 0)


class LooseSearch:
    """True patch distances behind bounds that overstate them by a random factor (never understate)."""

    def __init__(self, truth: np.ndarray, slack: np.ndarray) -> None:
        self.truth = truth  # the query "embedding" is its own index
        self.slack = slack
        self.searched = 0
        self.refined = 0

    def distances(self, queries: np.ndarray, maps: bool) -> tuple[np.ndarray, bool]:
        del maps
        rows = queries[:, 0].astype(int)
        return self.truth[rows] * self.slack[rows], False

    def refine(self, queries: np.ndarray) -> np.ndarray:
        rows = queries[:, 0].astype(int)
        self.refined += len(queries)
        return self.truth[rows] * np.sqrt(self.slack[rows])  # tighter than the first bounds, still never below

    def exact(self, queries: np.ndarray) -> np.ndarray:
        self.searched += len(queries)
        return self.truth[queries[:, 0].astype(int)]


@pytest.mark.parametrize("spread", [0.0, 0.05, 0.5, 3.0])
def test_peak_maps_are_exact_whatever_the_bounds(spread):
    rng = np.random.default_rng(3)
    batch, height, width, size = 5, 16, 16, (128, 128)
    truth = (rng.random(batch * height * width) + 1.0).astype(np.float32)
    truth[37] = 4.0  # a clear defect in the first image, and a flat last image
    truth[-height * width :] = 1.5
    slack = (1.0 + spread * rng.random(len(truth))).astype(np.float32)
    search = LooseSearch(truth, slack)
    operator = UpsampleBlur((height, width), size, gaussian_kernel())
    blur = GridBlur(operator.rows.numpy(), operator.columns_t.numpy())
    queries = np.arange(len(truth), dtype=np.float32).reshape(batch, height, width, 1)
    scores, maps = peak_maps(queries, search, blur, maps=False)
    expected = blur(truth.reshape(batch, height, width)).max(axis=(1, 2))
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)
    assert maps is None
    assert search.searched <= len(truth)
    if spread == 0.05:
        assert search.searched < len(truth) // 2  # tight bounds: most patches are never searched exactly


@pytest.mark.parametrize("head", [False, True])
def test_the_exact_torch_search_a_gpu_scores_with_gives_the_tails_scores_and_maps(head):
    """The off-CPU path (exact torch search) and the tail every CPU runtime uses agree, head included."""
    from vad.models.patchcore.torch_tail import TorchTail

    generator = torch.Generator().manual_seed(5)
    bank = torch.randn(300, 24, generator=generator)
    embedding = torch.randn(3, 8, 8, 24, generator=generator)
    weights = (torch.randn(48, generator=generator), torch.tensor([0.25])) if head else None
    tail = TorchTail(bank, torch.empty(0), gaussian_kernel(), (64, 64), weights, exact_only=False)
    scores, maps = tail(embedding, maps=True)  # the CPU: the numpy tail
    torch_scores, torch_maps = tail.exact_in_torch(embedding, maps=True)
    torch.testing.assert_close(torch_scores, scores, rtol=1e-4, atol=1e-4)
    assert maps is not None and torch_maps is not None and torch_maps.shape == maps.shape == (3, 1, 64, 64)
    torch.testing.assert_close(torch_maps, maps, rtol=1e-4, atol=1e-4)
    assert tail.exact_in_torch(embedding, maps=False)[1] is None
