"""The heatmap PNG encoder: valid files that decode to the same pixels, with ISA-L and with plain zlib."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from vad import png
from vad.heatmaps import render, save_heatmap


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        picture.load()
        return np.asarray(picture)


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 3), (64, 33, 4), (17, 9), (240, 320, 3)])
def test_decodes_to_the_same_pixels(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    pixels[: shape[0] // 2] //= 7  # rows with structure as well as noise (the Up filter wraps around 256)
    assert np.array_equal(_decoded(png.encode_png(pixels)), pixels)


def test_plain_zlib_writes_the_same_pixels(monkeypatch):
    pixels = np.random.default_rng(3).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    monkeypatch.setattr(png, "_deflater", zlib)
    monkeypatch.setattr(png, "DEFLATE_LEVEL", 1)
    data = png.encode_png(pixels)
    assert np.array_equal(_decoded(data), pixels)
    with Image.open(io.BytesIO(data)) as picture:
        picture.verify()  # chunk CRCs and structure


def test_a_heatmap_file_is_about_the_size_of_pillows_and_the_same_picture(tmp_path):
    y, x = np.mgrid[0:120, 0:160]
    image = Image.fromarray(np.stack([(x * 1.5) % 256, (y * 2) % 256, (x + y) % 256], axis=2).astype(np.uint8))
    anomaly = np.exp(-((x[::4, ::4] - 80) ** 2 + (y[::4, ::4] - 60) ** 2) / 200.0)
    picture = render(image, anomaly)
    ours = tmp_path / "ours.png"
    save_heatmap(picture, ours)
    pillow = io.BytesIO()
    picture.save(pillow, format="PNG", compress_level=1)
    assert np.array_equal(_decoded(ours.read_bytes()), np.asarray(picture))
    assert ours.stat().st_size <= 1.6 * len(pillow.getvalue())


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3))])
def test_other_arrays_are_refused(bad):
    with pytest.raises(ValueError, match="uint8 array"):
        png.encode_png(bad)
