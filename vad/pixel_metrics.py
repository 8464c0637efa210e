"""Pixel-level metrics (pixel AUROC, AUPRO) from raw anomaly maps and ground-truth masks, in bounded memory.

Exact pixel metrics keep every map and mask (anomalib's and torchmetrics' do), which grows with the
number of masked images. Here each pixel only adds to a histogram of :data:`BINS` equal bins whose
range grows as values arrive (two neighbouring bins merge and the range doubles, so earlier counts stay
exact at the coarser width). Three rows share the bins: normal pixels, defect pixels, and defect
pixels weighted by 1 / (size of their defect region), which gives the per-region overlap AUPRO needs.

Binning error: pixels of the two classes that fall in the same bin count as ties (half a correct
pair). :meth:`PixelMetrics.compute` reports the bound this puts on the pixel AUROC
(``pixel_auroc_bin_error``: half the share of defect x normal pairs that share a bin); the AUPRO
curve is interpolated linearly inside a bin. Both are tested against the exact values on small data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from vad.images import read_image
from vad.samples import IS_NG, MASK

BINS = 4096
FPR_LIMIT = 0.3  # AUPRO integrates the per-region overlap up to this false positive rate, as anomalib does
NORMAL, DEFECT, REGION_WEIGHTED = 0, 1, 2


def regions(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """Label the 8-connected regions of a mask as OpenCV's ``connectedComponents`` does (OpenCV optional).

    Args:
        mask: bool (H, W).

    Returns:
        The label count (the background's 0 included) and labels (H, W): 0 outside, 1..n inside (the numbering
        may differ between OpenCV and the fallback; the regions are the same, and AUPRO needs only those).
    """
    try:
        import cv2
    except ImportError:  # the slim edge install: the same labels by propagating each region's smallest index
        return _regions_numpy(mask)
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return int(count), labels


def _regions_numpy(mask: np.ndarray) -> tuple[int, np.ndarray]:
    outside = mask.size + 1
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), outside)
    height, width = mask.shape
    while True:
        padded = np.pad(labels, 1, constant_values=outside)
        smallest = labels
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                smallest = np.minimum(smallest, padded[dy : dy + height, dx : dx + width])
        smallest = np.where(mask, smallest, outside)
        if np.array_equal(smallest, labels):
            break
        labels = smallest
    roots = np.unique(labels[mask])  # each region's smallest flat index + 1: regions in first-pixel order
    result = np.zeros(mask.shape, dtype=np.int32)
    result[mask] = np.searchsorted(roots, labels[mask]) + 1
    return len(roots) + 1, result


def read_mask(path: str, size: tuple[int, int]) -> np.ndarray:
    """Read a defect mask (non-zero = defect) resized to (height, width); a pixel touching a defect counts.

    Args:
        path: Mask image; empty for a defect-free image.
        size: (height, width) of the anomaly maps.

    Returns:
        A boolean mask.
    """
    if not path:
        return np.zeros(size, dtype=bool)
    mask = read_image(path).convert("L").point(lambda value: 255 if value > 127 else 0)
    return np.asarray(mask.resize((size[1], size[0]), Image.Resampling.BOX)) > 0


class GrowingHistogram:
    """Weighted counts of values in equal bins shared by several rows; the range grows to cover every value."""

    def __init__(self, rows: int, bins: int = BINS) -> None:
        self.bins = bins
        self.counts = np.zeros((rows, bins), dtype=np.float64)
        self.low: float | None = None
        self.width = 0.0

    def _merge(self, upward: bool) -> None:
        merged = self.counts.reshape(len(self.counts), self.bins // 2, 2).sum(axis=2)
        empty = np.zeros_like(merged)
        self.counts = np.concatenate([merged, empty] if upward else [empty, merged], axis=1)
        if not upward and self.low is not None:
            self.low -= self.bins * self.width
        self.width *= 2

    def _cover(self, low: float, high: float) -> float:
        """Widen the bins until they cover [low, high]; return the low edge of the first bin."""
        if self.low is None:
            span = high - low
            self.low = low
            self.width = span / (self.bins - 1) if span > 0 else max(abs(low), 1.0) * 1e-6
        while high >= self.low + self.width * self.bins:
            self._merge(upward=True)
        while low < self.low:
            self._merge(upward=False)
        return self.low

    def add(self, row: int, values: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Count values into one row.

        Args:
            row: The row.
            values: Finite values.
            weights: One weight per value (1 when omitted).
        """
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size == 0:
            return
        origin = self._cover(float(values.min()), float(values.max()))
        index = np.clip(((values - origin) / self.width).astype(np.int64), 0, self.bins - 1)
        self.counts[row] += np.bincount(index, weights=weights, minlength=self.bins)


class PixelMetrics:
    """Accumulates anomaly maps and masks into histograms; computes pixel AUROC and AUPRO (FPR limit 0.3)."""

    def __init__(self, bins: int = BINS) -> None:
        self.histogram = GrowingHistogram(3, bins)
        self.regions = 0
        self.defective = 0

    def update(self, raw_maps: np.ndarray, mask_paths: list[str]) -> None:
        """Add a batch.

        Args:
            raw_maps: Raw anomaly maps (B, H, W).
            mask_paths: One mask path per map ('' for defect-free images).
        """
        size = raw_maps.shape[-2:]
        for raw_map, path in zip(np.asarray(raw_maps, dtype=np.float64), mask_paths, strict=True):
            mask = read_mask(path, size)
            self.histogram.add(NORMAL, raw_map[~mask])
            if not mask.any():
                continue
            self.defective += 1
            count, labels = regions(mask)
            sizes = np.bincount(labels.reshape(-1), minlength=count)
            self.histogram.add(DEFECT, raw_map[mask])
            self.histogram.add(REGION_WEIGHTED, raw_map[mask], 1.0 / sizes[labels[mask]])
            self.regions += count - 1

    def compute(self) -> dict[str, float]:
        """The metrics, or an empty dict when no defective or no normal pixel was seen.

        Returns:
            ``pixel_auroc``, ``pixel_aupro`` and ``pixel_auroc_bin_error`` (the binning's bound on the AUROC).
        """
        normal, defect, weighted = self.histogram.counts
        negatives, positives = normal.sum(), defect.sum()
        if self.defective == 0 or negatives == 0 or positives == 0:
            return {}
        below = np.cumsum(normal) - normal  # normal pixels in lower bins
        pairs = negatives * positives
        auroc = float((defect * (below + 0.5 * normal)).sum() / pairs)
        bound = float(0.5 * (defect * normal).sum() / pairs)
        aupro = self._aupro(normal / negatives, weighted / self.regions)
        return {"pixel_auroc": auroc, "pixel_aupro": aupro, "pixel_auroc_bin_error": bound}

    @staticmethod
    def _aupro(normal_share: np.ndarray, region_share: np.ndarray) -> float:
        """Area under the per-region-overlap curve up to :data:`FPR_LIMIT`, normalised (anomalib's definition)."""
        fpr = np.concatenate([[0.0], np.cumsum(normal_share[::-1])])  # thresholds from the top bin down
        pro = np.concatenate([[0.0], np.cumsum(region_share[::-1])])
        inside = int(np.searchsorted(fpr, FPR_LIMIT, side="right"))
        if inside < len(fpr):
            f1, f2, p1, p2 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
            limit_pro = p1 + (p2 - p1) * (FPR_LIMIT - f1) / (f2 - f1) if f2 > f1 else p2
            fpr = np.concatenate([fpr[:inside], [FPR_LIMIT]])
            pro = np.concatenate([pro[:inside], [limit_pro]])
        return float(np.trapezoid(pro, fpr) / fpr[-1]) if fpr[-1] > 0 else 0.0


class PixelRows:
    """Pixel metrics over the rows of a sample table that have a usable mask (or are OK)."""

    def __init__(self, samples: pd.DataFrame) -> None:
        has_masks = MASK in samples and IS_NG in samples and bool((samples[MASK] != "").any())
        if has_masks:
            is_ok = (samples[IS_NG] == False).fillna(False).to_numpy(dtype=bool)  # noqa: E712 (<NA>: unlabelled)
            self.usable = list(is_ok | (samples[MASK] != "").to_numpy(dtype=bool))
            self.masks = list(samples[MASK])
        else:
            self.usable, self.masks = [], []
        self.metrics = PixelMetrics() if has_masks else None

    @property
    def wanted(self) -> bool:
        """Whether the rows need anomaly maps (some have masks)."""
        return self.metrics is not None

    def update(self, positions: np.ndarray, raw_maps: np.ndarray) -> None:
        """Add the maps of a batch (positions index the sample table).

        Args:
            positions: Row positions of the batch.
            raw_maps: Their raw anomaly maps (B, H, W).
        """
        if self.metrics is None:
            return
        keep = [i for i, position in enumerate(positions) if self.usable[position]]
        if keep:
            self.metrics.update(raw_maps[keep], [self.masks[positions[i]] for i in keep])

    def compute(self) -> dict[str, float]:
        """Pixel metrics, or an empty dict without masks.

        Returns:
            ``pixel_auroc``, ``pixel_aupro`` and the AUROC's binning bound when available.
        """
        return self.metrics.compute() if self.metrics else {}
