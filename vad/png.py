"""A fast PNG encoder for the heatmap pictures: one "Up" filter pass in numpy, then deflate.

Pillow's encoder tries its filters row by row and deflates with zlib: 13.2 ms for a 768 x 256 heatmap picture
at zlib level 1 on this CPU, the largest part of what an edge request added to scoring. Here every row (but the
first) is filtered with "Up" (the byte above subtracted) in one numpy operation and the data deflated with
ISA-L (``isal``, at its level 2) where it is installed, else with zlib at level 1: 1.8 ms for the same picture,
a file of the same size (299 against 297 KB), the same pixels (tested). Figures: BENCHMARKS.md, "Serving:
heatmap encoding and the scoring thread".
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np

_deflater: ModuleType  # zlib's interface: compressobj, compress
try:  # ISA-L's deflate: zlib-compatible output, several times faster than zlib at its fastest levels
    from isal import isal_zlib as _deflater

    DEFLATE_LEVEL = 2
except ImportError:  # pragma: no cover - the edge install may lack it: zlib writes the same format
    _deflater = zlib
    DEFLATE_LEVEL = 1

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA), 8 bits per sample
FILTER_NONE, FILTER_UP = 0, 2


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode an 8-bit image as PNG.

    Args:
        pixels: H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA) ``uint8`` array.

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: Not an 8-bit image of one of those shapes.
    """
    array = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if pixels.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in COLOR_TYPES or min(array.shape[:2]) < 1:
        msg = f"a PNG needs an H x W, H x W x 3 or H x W x 4 uint8 array, got {pixels.dtype} {pixels.shape}"
        raise ValueError(msg)
    height, width, channels = array.shape
    rows = np.ascontiguousarray(array).reshape(height, width * channels)
    body = np.empty((height, width * channels + 1), dtype=np.uint8)
    body[0, 0], body[0, 1:] = FILTER_NONE, rows[0]
    body[1:, 0] = FILTER_UP
    np.subtract(rows[1:], rows[:-1], out=body[1:, 1:])  # modulo 256, as the filter is defined
    header = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[channels], 0, 0, 0)
    data = _deflater.compress(body.data, DEFLATE_LEVEL)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def write_png(pixels: np.ndarray, path: Path) -> None:
    """Encode an image (see :func:`encode_png`) and write it to ``path``.

    Args:
        pixels: The image.
        path: The ``.png`` file.
    """
    Path(path).write_bytes(encode_png(pixels))
