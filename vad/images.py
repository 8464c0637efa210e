"""Reading product images of any common kind into RGB pictures and model-size pixel arrays (no torch here).

Handles EXIF orientation, grayscale, palette, RGBA (composited on black), 16-bit and float
images, and refuses decompression bombs and files that are not images.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from alo.errors import DataError, one_line

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
MAX_PIXELS = 64_000_000  # far above the 1920x1920 the product supports; larger files are refused
SIZE_MULTIPLE = 32
JPEG_TAIL = 4096  # bytes at the end of a JPEG searched for its end-of-image marker
MAX_SIDE = 2048  # the longest model input side an int img_size may produce (the plan's own limit too)


# What Pillow raises for files that are empty, truncated, corrupt, not images, or decompression bombs.
DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


UPLOAD_FORMATS = frozenset({"PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP"})  # Pillow's names; MPO: phone JPEGs


class ImageReadError(DataError):
    """An image file cannot be decoded."""


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of any PIL image: 16-bit and float scaled, transparency composited on black.

    Args:
        image: The image.

    Returns:
        The RGB image.
    """
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class _TooLargeError(Exception):
    """An image whose pixel count is over :data:`MAX_PIXELS`."""


@contextmanager
def _open_checked(path: str | Path | BinaryIO) -> Iterator[Image.Image]:
    """Open an image lazily, refusing oversized ones; decompression-bomb warnings become errors inside."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                msg = f"{image.width}x{image.height} pixels is over the {MAX_PIXELS:,} limit"
                raise _TooLargeError(msg)
            yield image


def read_image(path: str | Path) -> Image.Image:
    """Read an image file as an upright 8-bit RGB PIL image.

    Args:
        path: The image file.

    Returns:
        The decoded image.

    Raises:
        ImageReadError: Missing, empty, corrupt, not an image, or too large.
    """
    path = Path(path)
    try:
        with _open_checked(path) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except _TooLargeError as exc:
        msg = f"data error: image {path} is too large ({exc}); downscale it below 8000x8000"
        raise ImageReadError(msg) from None
    except FileNotFoundError:
        msg = f"data error: image {path} does not exist; fix the path in the CSV or restore the file"
        raise ImageReadError(msg) from None
    except DECODE_ERRORS as exc:
        msg = f"data error: cannot read image {path} ({exc.__class__.__name__}); replace or remove the file"
        raise ImageReadError(msg) from None


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode image bytes (an upload) as an upright 8-bit RGB image, trusting the content, not the name.

    Args:
        data: The file's bytes.
        name: The name shown in errors.

    Returns:
        The decoded image.

    Raises:
        ImageReadError: Empty, not an image of a supported format, corrupt, or too large.
    """
    shown = one_line(name)[:120]
    try:
        with _open_checked(io.BytesIO(data)) as image:
            if image.format not in UPLOAD_FORMATS:
                msg = f"data error: {shown} is a {image.format} file; send PNG, JPEG, BMP, TIFF or WebP images"
                raise ImageReadError(msg)
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except _TooLargeError as exc:
        msg = f"data error: image {shown} is too large ({exc}); downscale it below 8000x8000"
        raise ImageReadError(msg) from None
    except DECODE_ERRORS as exc:
        msg = f"data error: {shown} is not a readable image ({exc.__class__.__name__}); send a PNG or JPEG file"
        raise ImageReadError(msg) from None


def _jpeg_is_complete(path: str | Path) -> bool:
    """A JPEG cut short lacks its end-of-image marker (trailing padding or metadata after it is allowed)."""
    with Path(path).open("rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - JPEG_TAIL))
        return b"\xff\xd9" in handle.read()


def probe_image(path: str | Path) -> str | None:
    """Check, at a fraction of a decode's cost, that a file will decode as an image.

    The header is read (zero-byte, non-image and oversized files fail here); a PNG's chunk checksums
    are verified without inflating the pixels, a JPEG must end with its end-of-image marker (what a
    truncated file lacks), and other formats are decoded in full.

    Args:
        path: The image file.

    Returns:
        None when the image is readable, else a short reason.
    """
    try:
        with _open_checked(path) as image:
            if image.format == "PNG":
                image.verify()
            elif image.format == "JPEG":
                if not _jpeg_is_complete(path):
                    return "truncated JPEG (no end-of-image marker)"
            else:
                image.load()
    except _TooLargeError as exc:
        return str(exc)
    except FileNotFoundError:
        return "file not found"
    except DECODE_ERRORS as exc:
        return exc.__class__.__name__
    return None


def model_input_size(img_size: int | Sequence[int], height: int, width: int) -> tuple[int, int]:
    """Turn the plan's ``img_size`` into a fixed (height, width) for the model.

    An int keeps the aspect ratio of the reference image (the shorter side gets the int, unless the
    longer side would pass ``MAX_SIDE``: an extreme strip is scaled to fit instead); ``[h, w]`` is
    used as given. Both sides are rounded to a multiple of 32 so every feature
    stride divides them.

    Args:
        img_size: ``256`` or ``[256, 256]``.
        height: Height of a reference training image.
        width: Width of a reference training image.

    Returns:
        (height, width) in pixels.
    """
    if isinstance(img_size, int):
        scale = min(img_size / min(height, width), MAX_SIDE / max(height, width))
        size = (height * scale, width * scale)
    else:
        size = (float(img_size[0]), float(img_size[1]))
    return _multiple(size[0]), _multiple(size[1])


def _multiple(side: float) -> int:
    """The nearest multiple of :data:`SIZE_MULTIPLE` (at least one)."""
    return max(SIZE_MULTIPLE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def model_pixels(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An RGB image resized (antialiased bilinear, as every model input is made) to the model's input size.

    Args:
        image: RGB image.
        size: (height, width).

    Returns:
        uint8 pixels (height, width, 3).
    """
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


@lru_cache(maxsize=8)
def _normalizing_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Each channel's normalised value of each of the 256 pixel values (3, 256), float32.

    The same float32 operations as the arithmetic on whole images (scale, minus the mean, over the std), so
    looking pixels up gives bit-identical values, 6-7x faster on a 256 px image (0.3 against 2.0 ms).
    """
    values = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
    table = (values - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]
    return np.ascontiguousarray(table, dtype=np.float32)


def normalized(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Model-size pixels scaled to [0, 1] and normalised per channel, channels first.

    Args:
        pixels: uint8 (height, width, 3).
        mean: Per-channel mean of the backbone's training data.
        std: Per-channel standard deviation.

    Returns:
        float32 (3, height, width), contiguous.
    """
    table = _normalizing_table(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    planes = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8).transpose(2, 0, 1))
    out = np.empty(planes.shape, dtype=np.float32)
    for channel in range(planes.shape[0]):
        np.take(table[channel], planes[channel], out=out[channel])
    return out
