"""Heatmap pictures: original | heatmap overlay | predicted region, at the original resolution.

OpenCV is optional (the slim edge install has none): the map is resized by OpenCV's bilinear ``INTER_LINEAR``
where it is installed, else by the same interpolation in numpy (equal within float rounding, tested; slower on
large pictures), and the region's outline is its border band, drawn in numpy.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from vad.images import read_image
from vad.png import encode_png, write_png

UNKNOWN_LABEL = "unknown"  # the label part of heatmap file names of images without a label

# matplotlib's "jet" colour map as its segment table (position, value) per channel, sampled at 256 levels the way
# matplotlib builds its lookup table (equality tested): the same colours without importing matplotlib to score.
_JET_SEGMENTS = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)
_JET = (
    np.stack([np.interp(np.linspace(0.0, 1.0, 256), *np.array(segments).T) for segments in _JET_SEGMENTS], axis=1) * 255
).astype(np.uint8)


def resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D anomaly map to an image's resolution (bilinear).

    Args:
        anomaly_map: Normalised map (values in [0, 1]).
        height: Target height.
        width: Target width.

    Returns:
        The map as float32 of shape (height, width).
    """
    array = np.asarray(anomaly_map, dtype=np.float32).squeeze()
    cv2 = _cv2()
    if array.shape != (height, width) and cv2 is not None:
        array = cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)
    elif array.shape != (height, width):
        rows, row_weights = _linear(height, array.shape[0])
        columns, column_weights = _linear(width, array.shape[1])
        down = row_weights[:, None]
        array = array[rows[0]] * (1.0 - down) + array[rows[1]] * down  # (height, w)
        array = array[:, columns[0]] * (1.0 - column_weights) + array[:, columns[1]] * column_weights
    return np.clip(array, 0.0, 1.0)


@lru_cache(maxsize=1)
def _cv2() -> ModuleType | None:
    """OpenCV, when installed."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


@lru_cache(maxsize=32)
def _linear(n_out: int, n_in: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """One axis of a bilinear resize: both source pixels of each output pixel and the second one's weight.

    Pixel centres sit at half pixels and the edges are clamped, as in OpenCV's ``INTER_LINEAR``.
    """
    source = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    low = np.floor(source).astype(np.int64)
    weight = (source - low).astype(np.float32)
    return (low, np.minimum(low + 1, n_in - 1)), weight


def _outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    """The band of a mask within ``thickness`` pixels of its border (inside and out), as the outline drawn."""
    grown, shrunk = mask.copy(), mask.copy()
    for _ in range(thickness):
        grown = _shift_any(grown, np.logical_or)
        shrunk = _shift_any(shrunk, np.logical_and)
    return grown & ~shrunk


def _shift_any(mask: np.ndarray, combine: np.ufunc) -> np.ndarray:
    """One step of dilation (``logical_or``) or erosion (``logical_and``) over the 8 neighbours."""
    padded = np.pad(mask, 1, mode="edge")
    out = mask.copy()
    height, width = mask.shape
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out = combine(out, padded[dy : dy + height, dx : dx + width])
    return out


def render(image: Image.Image, anomaly_map: np.ndarray, threshold: float = 0.5) -> Image.Image:
    """Draw the three panels of a heatmap picture.

    Args:
        image: The original RGB image.
        anomaly_map: Normalised anomaly map (0.5 = the trained threshold), any resolution.
        threshold: Normalised value from which a pixel belongs to the predicted region.

    Returns:
        An RGB image three times as wide as the original.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width = rgb.shape[:2]
    heat = resize_map(anomaly_map, height, width)
    colored = _JET[(heat * 255).astype(np.uint8)]
    overlay = (0.55 * rgb + 0.45 * colored).astype(np.uint8)
    mask = heat >= threshold
    region = rgb.copy()
    if mask.any():
        tint = np.array([255, 0, 0], dtype=np.float32)
        region[mask] = (0.6 * region[mask] + 0.4 * tint).astype(np.uint8)
        thickness = max(1, round(min(height, width) / 300))  # a band of twice this: OpenCV's line width before
        region[_outline(mask, thickness)] = (255, 0, 0)
    return Image.fromarray(np.concatenate([rgb, overlay, region], axis=1))


def heatmap_name(label: str, pred: str, image_path: str | Path) -> str:
    """File name ``{label}_{pred}_{original_stem}.png`` of a heatmap picture.

    Args:
        label: The true label (``unknown`` when none).
        pred: The predicted label.
        image_path: The original image.

    Returns:
        The file name.
    """
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{label}_{pred}_{Path(image_path).stem}")
    return f"{safe}.png"


def save_heatmap(picture: Image.Image, path: Path) -> None:
    """Write a heatmap picture as a PNG, quickly (:func:`vad.png.write_png`: 1.8 ms, Pillow 13 at level 1).

    Args:
        picture: The picture.
        path: The ``.png`` file (its folder is created if needed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(np.asarray(picture if picture.mode == "RGB" else picture.convert("RGB")), path)


def heatmap_png(source: str | Path, anomaly_map: np.ndarray, threshold: float) -> bytes:
    """The heatmap picture of an image file as PNG bytes: read, drawn (:func:`render`) and encoded.

    The inference step has it made after the answer (a deferred file), off the request's path.

    Args:
        source: The scored image file.
        anomaly_map: Its normalised anomaly map.
        threshold: Normalised value from which a pixel belongs to the predicted region.

    Returns:
        The PNG file's bytes.
    """
    return encode_png(np.asarray(render(read_image(source), anomaly_map, threshold)))
