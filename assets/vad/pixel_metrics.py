"""Pixel-level metrics (pixel AUROC, AUPRO) from raw anomaly maps and ground-truth masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from anomalib.metrics.aupro import _AUPRO
from PIL import Image
from torchmetrics.classification import BinaryAUROC

from assets.vad.images import read_image


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


class PixelMetrics:
    """Accumulates anomaly maps and masks, then computes pixel AUROC and AUPRO (FPR limit 0.3)."""

    def __init__(self) -> None:
        self.auroc = BinaryAUROC()
        self.aupro = _AUPRO(fpr_limit=0.3)
        self.count = 0
        self.defective = 0

    def update(self, raw_maps: np.ndarray, mask_paths: list[str]) -> None:
        """Add a batch.

        Args:
            raw_maps: Raw anomaly maps (B, H, W).
            mask_paths: One mask path per map ('' for defect-free images).
        """
        size = raw_maps.shape[-2:]
        masks = torch.from_numpy(np.stack([read_mask(p, size) for p in mask_paths]).astype(np.int64))
        maps = torch.from_numpy(np.ascontiguousarray(raw_maps, dtype=np.float32))
        self.auroc.update(maps.flatten(), masks.flatten())
        self.aupro.update(maps, masks)
        self.count += len(mask_paths)
        self.defective += int(sum(bool(p) for p in mask_paths))

    def compute(self) -> dict[str, float]:
        """The metrics, or an empty dict when no defective pixel was seen.

        Returns:
            ``pixel_auroc`` and ``pixel_aupro``.
        """
        if self.count == 0 or self.defective == 0:
            return {}
        return {"pixel_auroc": float(self.auroc.compute()), "pixel_aupro": float(self.aupro.compute())}


class PixelRows:
    """Pixel metrics over the rows of a sample table that have a usable mask (or are OK)."""

    def __init__(self, samples: pd.DataFrame) -> None:
        has_masks = "_mask" in samples and "_is_ng" in samples and bool((samples["_mask"] != "").any())
        self.masks = list(samples["_mask"]) if has_masks else []
        self.usable = list(~samples["_is_ng"] | (samples["_mask"] != "")) if has_masks else []
        self.metrics = PixelMetrics() if has_masks else None

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
            ``pixel_auroc`` and ``pixel_aupro`` when available.
        """
        return self.metrics.compute() if self.metrics else {}
