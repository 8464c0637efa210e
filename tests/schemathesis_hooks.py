"""Schemathesis hooks for ``tests/test_openapi_contract.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

``/openapi.json`` says the parts of a multipart upload are images (``format: binary``, with
``encoding.files.contentType`` PNG, JPEG, BMP, TIFF or WebP). Schemathesis cannot make an image by itself (its
``binary`` values are random bytes and a few sample files), so here ``binary`` makes real, small pictures of
those formats (random size and pixels, drawn by Hypothesis): a schema-valid upload is then a decodable image,
which the API must score. The only binary values of this API are those uploads.
"""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")  # the formats the API decodes (vad.images.UPLOAD_FORMATS)


def _encode(kind: str, size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, kind)
    return buffer.getvalue()


pictures = st.builds(
    _encode, st.sampled_from(FORMATS), st.tuples(st.integers(1, 96), st.integers(1, 96)), st.integers(0, 2**32 - 1)
)
schemathesis.openapi.format("binary", pictures)
