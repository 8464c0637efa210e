"""PatchCore's image scores, exact, from a few exact patch searches: bounds on the map decide which.

The image score is the peak of the anomaly map, and the map is a fixed non-negative linear function of
the patch distances (:class:`~vad.models.maps.UpsampleBlur`). So distances that are upper bounds
of the true ones (the inverted file's: the nearest row among the visited lists is never nearer than the
nearest row of the bank) give a map that is an upper bound of the true map, pixel by pixel. The peak
is then found exactly by searching exactly only the patches that could hold it:

1. the patches that the highest bounded pixel depends on get tighter bounds first (the inverted file with
   more lists visited, :meth:`BankSearch.refine`, about 1/30 of an exact search's cost), and the map's
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
"""

from __future__ import annotations

from typing import Protocol

import torch

from vad.models.maps import UpsampleBlur

BOUNDED, REFINED, EXACT = 0, 1, 2  # how well each patch's distance is known


class PatchSearch(Protocol):
    """What :func:`peak_scores` needs of a search (:class:`~vad.models.patchcore.search.BankSearch`)."""

    def distances(self, queries: torch.Tensor, maps: bool) -> tuple[torch.Tensor, bool]: ...  # noqa: D102

    def refine(self, queries: torch.Tensor) -> torch.Tensor: ...  # noqa: D102

    def exact(self, queries: torch.Tensor) -> torch.Tensor: ...  # noqa: D102


def peak_scores(
    queries: torch.Tensor, grid: tuple[int, int, int], search: PatchSearch, blur: UpsampleBlur, maps: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact image scores of a batch, and its anomaly maps on request.

    Args:
        queries: Patch embeddings (B * h * w, D), row-major per image.
        grid: (B, h, w).
        search: The bank's searches.
        blur: The upsample-and-blur operator of this grid and image size.
        maps: Return the maps (exact for banks whose maps are exact, else from the inverted file).

    Returns:
        Scores (B,) and maps (B, 1, H, W) or None.
    """
    distances, exact = search.distances(queries, maps)
    patches = distances.reshape(grid).float()
    bounded = blur(patches)
    if exact:
        return bounded.amax(dim=(1, 2)), bounded.unsqueeze(1) if maps else None
    scores = bounded.amax(dim=(1, 2))
    queries = queries.reshape(*grid, -1)
    level = torch.full(grid, BOUNDED, dtype=torch.int8, device=patches.device)
    active = torch.arange(grid[0], device=patches.device)  # images that may still have candidates
    region = blur.patches_of(bounded == scores[:, None, None])  # the patches of each image's highest pixel
    while len(active):
        coarse = region & (level[active] == BOUNDED)
        step, todo = (REFINED, coarse) if bool(coarse.any()) else (EXACT, region & (level[active] == REFINED))
        sub, level_sub = patches[active], level[active]
        wanted = queries[active][todo]
        sub[todo] = (search.refine(wanted) if step == REFINED else search.exact(wanted)).to(sub.dtype)
        level_sub[todo] = step
        patches[active], level[active] = sub, level_sub
        bounded = blur(sub)
        scores[active] = peak = bounded.amax(dim=(1, 2))
        unsettled = blur.pixels_of(level_sub != EXACT)
        floor = bounded.masked_fill(unsettled, -torch.inf).amax(dim=(1, 2), keepdim=True)
        candidates = torch.where(torch.isinf(floor), bounded == peak[:, None, None], bounded > floor)
        # an image whose candidates all depend only on exact patches is done: its peak is exact
        region = blur.patches_of(candidates) & (level_sub != EXACT)
        still = region.flatten(1).any(dim=1)
        active, region = active[still], region[still]
    if maps:
        return scores, blur(patches).unsqueeze(1)
    return scores, None
