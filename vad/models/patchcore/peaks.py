"""PatchCore's image scores, exact, from a few exact patch searches: bounds on the map decide which (numpy).

The image score is the peak of the anomaly map, and the map is a fixed non-negative linear function of
the patch distances (:class:`GridBlur`). So distances that are upper bounds
of the true ones (the inverted file's: the nearest row among the visited lists is never nearer than the
nearest row of the bank) give a map that is an upper bound of the true map, pixel by pixel. The peak
is then found exactly by searching exactly only the patches that could hold it:

1. the patches that the highest bounded pixel depends on get tighter bounds first (the inverted file with
   more lists visited, :meth:`~.search.BankIndex.refine`, about 1/30 of an exact search's cost), and the map's
   bounds are tightened;
2. the patches that the highest pixel then depends on are searched exactly: that pixel's value is exact,
   and the peak is at least the largest exact pixel (a pixel whose patches are all exact);
3. every pixel whose upper bound exceeds that lower bound is still a candidate: its patches are refined,
   then searched exactly, and the bounds tightened;
4. when no candidate has a patch left to search, the largest value of the map is the exact peak.

Each round works only on the images of the batch that still have candidates. On the default setting
(20,480 x 128 bank, 32 x 32 patches per image, 2 probes of 512 lists, then 16) about 25 patches per image
are searched exactly, against 98 without the refining step. The result equals the exact search's peak up
to float rounding (tested); only the map's other pixels keep bounded values, so it is used where maps are
not wanted, or where the map itself comes from the inverted file (large banks).

This is the one definition: the model, the torch scorer and the exported runtime's tail all call
:func:`peak_maps` (through :class:`~.tail.PatchcoreTail`), so they agree by construction.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

BOUNDED, REFINED, EXACT = 0, 1, 2  # how well each patch's distance is known


class PatchSearch(Protocol):
    """What :func:`peak_maps` needs of a search (:class:`~vad.models.patchcore.search.BankIndex`)."""

    def distances(self, queries: np.ndarray, maps: bool) -> tuple[np.ndarray, bool]: ...  # noqa: D102

    def refine(self, queries: np.ndarray) -> np.ndarray: ...  # noqa: D102

    def exact(self, queries: np.ndarray) -> np.ndarray: ...  # noqa: D102


class GridBlur:
    """A patch grid upsampled and blurred as two fixed products, ``rows @ grid @ columns_t``.

    The matrices come from :class:`vad.models.maps.UpsampleBlur` (built in torch where the model is); their 0/1
    supports tell which patches a pixel depends on and which pixels a patch reaches.
    """

    def __init__(self, rows: np.ndarray, columns_t: np.ndarray) -> None:
        """Keep the operator.

        Args:
            rows: (H, h) float32.
            columns_t: (w, W) float32.
        """
        self.rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.columns_t = np.ascontiguousarray(columns_t, dtype=np.float32)
        self.rows_reach = (self.rows > 0).astype(np.float32)
        self.columns_reach_t = (self.columns_t > 0).astype(np.float32)

    def __call__(self, grids: np.ndarray) -> np.ndarray:
        """Maps (B, H, W) of patch grids (B, h, w)."""
        return self.rows @ grids @ self.columns_t

    def patches_of(self, pixels: np.ndarray) -> np.ndarray:
        """Patches (B, h, w) that some given pixel (B, H, W, bool) depends on."""
        return (self.rows_reach.T @ pixels.astype(np.float32) @ self.columns_reach_t.T) > 0

    def pixels_of(self, patches: np.ndarray) -> np.ndarray:
        """Pixels (B, H, W) that depend on some given patch (B, h, w, bool)."""
        return (self.rows_reach @ patches.astype(np.float32) @ self.columns_reach_t) > 0


def peak_maps(
    queries: np.ndarray, search: PatchSearch, blur: GridBlur, maps: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Exact image scores of a batch, and its anomaly maps on request.

    Args:
        queries: Patch embeddings (B, h, w, D), float32.
        search: The bank's searches.
        blur: The upsample-and-blur operator of this grid and image size.
        maps: Return the maps (exact for banks whose maps are exact, else from the inverted file).

    Returns:
        Scores (B,) and maps (B, H, W) or None, float32.
    """
    batch, height, width, dims = queries.shape
    distances, exact = search.distances(queries.reshape(-1, dims), maps)
    patches = distances.reshape(batch, height, width).astype(np.float32)
    bounded = blur(patches)
    if not exact:
        bounded = _exact_peaks(queries, patches, search, blur)
    scores = bounded.max(axis=(1, 2)).astype(np.float32)
    return scores, bounded.astype(np.float32) if maps else None


def _exact_peaks(queries: np.ndarray, patches: np.ndarray, search: PatchSearch, blur: GridBlur) -> np.ndarray:
    """The maps of bounded patch distances, made exact where each map's peak can be (steps 1-4 above)."""
    level = np.full(patches.shape, BOUNDED, dtype=np.int8)
    bounded = blur(patches)
    found = bounded.copy()
    active = np.arange(len(patches))  # images that may still have candidates
    region = blur.patches_of(bounded == bounded.max(axis=(1, 2), keepdims=True))  # the highest pixel's patches
    while len(active):
        coarse = region & (level[active] == BOUNDED)
        step, todo = (REFINED, coarse) if coarse.any() else (EXACT, region & (level[active] == REFINED))
        sub, level_sub = patches[active], level[active]
        wanted = queries[active][todo]
        sub[todo] = search.refine(wanted) if step == REFINED else search.exact(wanted)
        level_sub[todo] = step
        patches[active], level[active] = sub, level_sub
        bounded = blur(sub)
        found[active] = bounded
        unsettled = blur.pixels_of(level_sub != EXACT)
        floor = np.where(unsettled, -np.inf, bounded).max(axis=(1, 2), keepdims=True)
        top = bounded == bounded.max(axis=(1, 2), keepdims=True)
        candidates = np.where(np.isinf(floor), top, bounded > floor)
        # an image whose candidates all depend only on exact patches is done: its peak is exact
        region = blur.patches_of(candidates) & (level_sub != EXACT)
        still = region.reshape(len(region), -1).any(axis=1)
        active, region = active[still], region[still]
    return found
