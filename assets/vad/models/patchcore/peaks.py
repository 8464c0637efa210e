"""PatchCore's image scores, exact, from a few exact patch searches: bounds on the map decide which.

The image score is the peak of the anomaly map, and the map is a fixed non-negative linear function of
the patch distances (:class:`~assets.vad.models.maps.UpsampleBlur`). So distances that are upper bounds
of the true ones (the inverted file's: the nearest row among the visited lists is never nearer than the
nearest row of the bank) give a map that is an upper bound of the true map, pixel by pixel. The peak
is then found exactly by searching exactly only the patches that could hold it:

1. every patch that the highest bounded pixel depends on is searched exactly: that pixel's value is now
   exact, and the peak is at least the largest exact pixel (a pixel whose patches are all exact);
2. every pixel whose upper bound exceeds that lower bound is still a candidate: its patches are searched
   exactly, and the bounds are tightened;
3. when no candidate has a patch left to search, the largest value of the map is the exact peak.

On the holdout-shaped setting (6,144 x 152 bank, 32 x 32 patches per image, 2 probes of 153 lists) about
one patch in ten is searched exactly, in two rounds. The result equals the exact search's peak up to float
rounding (tested); only the map's other pixels keep bounded values, so it is used where maps are not wanted,
or where the map itself comes from the inverted file (large banks).
"""

from __future__ import annotations

import torch

from assets.vad.models.maps import UpsampleBlur
from assets.vad.models.patchcore.search import BankSearch


def peak_scores(
    queries: torch.Tensor, grid: tuple[int, int, int], search: BankSearch, blur: UpsampleBlur, maps: bool
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
    if not exact:
        known = torch.zeros(grid, dtype=torch.bool, device=patches.device)
        candidates = bounded == bounded.amax(dim=(1, 2), keepdim=True)
        while True:
            needed = blur.patches_of(candidates) & ~known
            if not bool(needed.any()):
                break
            patches[needed] = search.exact(queries[needed.reshape(-1)]).to(patches.dtype)
            known |= needed
            bounded = blur(patches)
            settled = ~blur.pixels_of(~known)
            floor = torch.where(settled, bounded, torch.full_like(bounded, -torch.inf)).amax(dim=(1, 2), keepdim=True)
            candidates = bounded > floor
    scores = bounded.amax(dim=(1, 2))
    return scores, bounded.unsqueeze(1) if maps else None
