"""Image reading (modes, EXIF, corrupt files), input sizes and heatmap pictures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vad.batches import to_tensor
from vad.heatmaps import heatmap_name, render
from vad.images import ImageReadError, model_input_size, normalized, probe_image, read_image


def test_reads_gray_rgba_palette_and_16bit(tmp_path):
    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (32, 1))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgba = np.zeros((32, 64, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[:, :10, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "palette.png")
    deep = gray.astype(np.uint16) * 257
    Image.fromarray(deep).save(tmp_path / "deep.png")
    for name in ("gray", "rgba", "palette", "deep"):
        image = read_image(tmp_path / f"{name}.png")
        assert image.mode == "RGB" and image.size == (64, 32), name
    assert np.asarray(read_image(tmp_path / "rgba.png"))[0, 0].tolist() == [0, 0, 0]
    assert np.asarray(read_image(tmp_path / "rgba.png"))[0, 20].tolist() == [200, 0, 0]
    deep_rgb = np.asarray(read_image(tmp_path / "deep.png"))
    assert abs(int(deep_rgb[0, 63, 0]) - 252) <= 1


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").size == (20, 40)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00garbage"])
def test_unreadable_files_raise_one_line(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert "broken.png" in str(info.value) and "\n" not in str(info.value)


def test_extreme_aspect_ratio_is_capped_at_the_longest_side():
    assert model_input_size(320, 100, 4000) == (64, 2048)
    assert model_input_size(320, 12000, 300) == (2048, 64)
    assert model_input_size(320, 480, 640) == (320, 416), "ordinary photos keep the shorter side"


def test_input_size_keeps_aspect_for_int_and_rounds_to_32():
    assert model_input_size([256, 256], 1000, 500) == (256, 256)
    assert model_input_size(256, 480, 640) == (256, 352)
    assert model_input_size([250, 300], 10, 10) == (256, 288)


def test_to_tensor_resizes_and_normalises():
    image = Image.new("RGB", (100, 50), (255, 0, 128))
    tensor = to_tensor(image, (32, 64), mean=[0.5] * 3, std=[0.5] * 3)
    assert tuple(tensor.shape) == (3, 32, 64)
    assert tensor[0].mean().item() == pytest.approx(1.0)
    assert tensor[1].mean().item() == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("mean", "std"), [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
)
def test_normalized_by_table_equals_the_float32_arithmetic_bit_for_bit(mean, std):
    pixels = np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    pixels[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]
    arithmetic = (pixels.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    looked_up = normalized(pixels, mean, std)
    assert looked_up.dtype == np.float32 and looked_up.flags.c_contiguous
    assert np.array_equal(looked_up, arithmetic.transpose(2, 0, 1))


def test_heatmap_has_three_panels_at_original_resolution():
    image = Image.new("RGB", (90, 60), (100, 100, 100))
    anomaly = np.zeros((16, 16), dtype=np.float32)
    anomaly[4:8, 4:8] = 1.0
    picture = render(image, anomaly, threshold=0.5)
    assert picture.size == (270, 60)
    region = np.asarray(picture)[:, 180:]
    assert (region[..., 0] > region[..., 1]).any(), "predicted region is tinted red"
    assert heatmap_name("bad", "good", "dir/x y.png") == "bad_good_x_y.png"


def test_probe_finds_every_kind_of_unreadable_file(tmp_path):
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    picture.save(tmp_path / "good.jpg", quality=90)
    picture.save(tmp_path / "good.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(tmp_path / "deep.png")
    for name in ("good.jpg", "good.png", "deep.png"):
        assert probe_image(tmp_path / name) is None, name
    jpeg, png = (tmp_path / "good.jpg").read_bytes(), (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_bytes(b"label,image_path\n")
    for name in ("truncated.jpg", "truncated.png", "empty.png", "text.jpg", "absent.png"):
        assert probe_image(tmp_path / name) is not None, name


def test_heatmap_colours_are_matplotlibs_jet_without_importing_it():
    from matplotlib import colormaps

    from vad.heatmaps import _JET

    expected = (colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    assert np.array_equal(_JET, expected)


def test_heatmap_resize_without_opencv_equals_opencv(monkeypatch):
    import cv2

    from vad import heatmaps

    rng = np.random.default_rng(0)
    cases = [((40, 40), (64, 90)), ((320, 320), (256, 256)), ((7, 5), (3, 2)), ((64, 64), (64, 96))]
    for source, (height, width) in cases:
        values = rng.random(source).astype(np.float32)
        expected = np.clip(cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR), 0, 1)
        monkeypatch.setattr(heatmaps, "_cv2", lambda: None)
        found = heatmaps.resize_map(values, height, width)
        monkeypatch.undo()
        assert found.shape == (height, width)
        assert np.abs(found - expected).max() < 1e-6
