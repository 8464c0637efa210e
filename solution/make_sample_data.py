"""Generate the bundled sample dataset from a photograph shipped inside scikit-image.

The "product" is a stone-chip (gravel) surface panel photographed under slightly varying
conditions: each good image is a different crop of scikit-image's ``gravel`` photograph with a
small rotation, shift, exposure and contrast change, sensor noise and JPEG compression.
Defective images add one realistic defect to a fresh good image: a scratch, a crack, a spot, a
stain or missing material, and come with a binary mask (255 = defect).

Running the script twice with the same seed writes byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from skimage import data

SIZE = 256
DEFECTS = ("scratch", "crack", "spot", "stain", "missing")


@dataclass(frozen=True)
class Product:
    """A product to photograph: its source picture and how much its position varies."""

    name: str
    source: np.ndarray
    shift: int | None  # None: a texture, cropped anywhere; an int: an object, shifted at most this many pixels


def load_product(name: str = "gravel") -> Product:
    """Load a product from a photograph bundled in the scikit-image wheel (no download).

    Args:
        name: ``gravel``, ``brick`` or ``grass`` (surface textures) or ``coffee`` (an object: a cup).

    Returns:
        The product, its picture as float RGB in [0, 1].
    """
    if name == "coffee":
        picture = Image.fromarray(data.coffee()).resize((450, 300), Image.Resampling.LANCZOS)
        rgb = np.asarray(picture, dtype=np.float32)[:, 60:380] / 255.0
        return Product(name, rgb, shift=4)
    tints = {"gravel": (1.0, 0.93, 0.82), "brick": (1.0, 0.78, 0.66), "grass": (0.78, 1.0, 0.7)}
    gray = getattr(data, name)().astype(np.float32) / 255.0
    rgb = np.clip(gray[..., None] * np.array(tints[name], dtype=np.float32) * 0.9 + 0.06, 0.0, 1.0)
    return Product(name, rgb, shift=None)


def good_image(product: Product, rng: np.random.Generator) -> np.ndarray:
    """One photo of the good product: crop with small rotation and shift, exposure, contrast and noise."""
    source = product.source
    height, width = source.shape[:2]
    big = Image.fromarray((source * 255).astype(np.uint8))
    angle = float(rng.uniform(-2.0, 2.0)) if product.shift is None else float(rng.uniform(-1.0, 1.0))
    rotated = big.rotate(angle, resample=Image.Resampling.BILINEAR, center=(width / 2, height / 2))
    if product.shift is None:
        margin = 40
        left = int(rng.integers(margin, width - SIZE - margin))
        top = int(rng.integers(margin, height - SIZE - margin))
    else:
        left = (width - SIZE) // 2 + int(rng.integers(-product.shift, product.shift + 1))
        top = (height - SIZE) // 2 + int(rng.integers(-product.shift, product.shift + 1))
    crop = np.asarray(rotated.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32) / 255.0
    gain = rng.uniform(0.92, 1.08)
    contrast = rng.uniform(0.92, 1.08)
    mean = crop.mean()
    image = (crop - mean) * contrast + mean * gain
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    slope = rng.uniform(-0.04, 0.04, 2)
    image = image + (slope[0] * (xx - 0.5) + slope[1] * (yy - 0.5))[..., None]
    image = image + rng.normal(0.0, 0.012, image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _alpha(
    draw_fn: Callable[[ImageDraw.ImageDraw, int, np.random.Generator], None], rng: np.random.Generator, blur: float
) -> np.ndarray:
    """Draw a shape at 4x resolution and downsample it into a soft, anti-aliased alpha map."""
    scale = 4
    canvas = Image.new("L", (SIZE * scale, SIZE * scale), 0)
    draw_fn(ImageDraw.Draw(canvas), scale, rng)
    small = canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    if blur > 0:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(small, dtype=np.float32) / 255.0


def _centre(rng: np.random.Generator, margin: int = 40) -> np.ndarray:
    return rng.uniform(margin, SIZE - margin, 2)


def scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved scratch, brighter (exposed material) or darker (groove)."""

    def draw(canvas: ImageDraw.ImageDraw, scale: int, rng: np.random.Generator) -> None:
        start = _centre(rng)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(50, 130)
        end = np.clip(start + length * np.array([np.cos(angle), np.sin(angle)]), 8, SIZE - 8)
        bend = (start + end) / 2 + rng.normal(0, 12, 2)
        t = np.linspace(0, 1, 60)[:, None]
        points = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end
        width = int(rng.uniform(1.2, 2.6) * scale)
        canvas.line([tuple(p * scale) for p in points], fill=255, width=width, joint="curve")

    alpha = _alpha(draw, rng, 0.4)
    colour = np.array([0.92, 0.9, 0.86]) if rng.uniform() < 0.6 else np.array([0.12, 0.11, 0.1])
    return _blend(image, alpha * rng.uniform(0.55, 0.85), colour), alpha


def crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A jagged dark crack that wanders and branches."""

    def walk(
        canvas: ImageDraw.ImageDraw,
        scale: int,
        start: np.ndarray,
        heading: float,
        steps: int,
        rng: np.random.Generator,
        width: float,
    ) -> None:
        point = start.copy()
        path = [tuple(point * scale)]
        for _ in range(steps):
            heading += rng.normal(0, 0.3)
            point = np.clip(point + rng.uniform(3, 6) * np.array([np.cos(heading), np.sin(heading)]), 4, SIZE - 4)
            path.append(tuple(point * scale))
            if width > 1.2 and rng.uniform() < 0.06:
                walk(
                    canvas,
                    scale,
                    point,
                    heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2),
                    int(steps * 0.4),
                    rng,
                    width * 0.6,
                )
        canvas.line(path, fill=255, width=max(1, int(width * scale)), joint="curve")

    def draw(canvas: ImageDraw.ImageDraw, scale: int, rng: np.random.Generator) -> None:
        walk(
            canvas,
            scale,
            _centre(rng, 60),
            rng.uniform(0, 2 * np.pi),
            int(rng.integers(14, 28)),
            rng,
            rng.uniform(1.5, 3.0),
        )

    alpha = _alpha(draw, rng, 0.5)
    return _blend(image, alpha * rng.uniform(0.7, 0.9), np.array([0.05, 0.045, 0.04])), alpha


def spot(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A small round spot: a dark inclusion or a bright speck."""

    def draw(canvas: ImageDraw.ImageDraw, scale: int, rng: np.random.Generator) -> None:
        centre = _centre(rng) * scale
        radius = rng.uniform(4, 9, 2) * scale
        canvas.ellipse([tuple(centre - radius), tuple(centre + radius)], fill=255)

    alpha = _alpha(draw, rng, 1.2)
    colour = np.array([0.08, 0.07, 0.07]) if rng.uniform() < 0.6 else np.array([0.95, 0.95, 0.93])
    return _blend(image, alpha * rng.uniform(0.7, 0.9), colour), alpha


def stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A soft, irregular, semi-transparent tinted blotch (oil, rust or water mark)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    centre = _centre(rng, 50)
    field = np.zeros((SIZE, SIZE), dtype=np.float32)
    for _ in range(int(rng.integers(3, 7))):
        offset = centre + rng.normal(0, 14, 2)
        sigma = rng.uniform(7, 16)
        field += np.exp(-((xx - offset[0]) ** 2 + (yy - offset[1]) ** 2) / (2 * sigma**2))
    alpha = np.clip((field - 0.35) * 2.0, 0.0, 1.0)
    tints = (np.array([0.45, 0.28, 0.12]), np.array([0.2, 0.18, 0.15]), np.array([0.55, 0.5, 0.2]))
    colour = tints[int(rng.integers(len(tints)))]
    stained = image * (1 - 0.55 * alpha[..., None]) + colour * 0.55 * alpha[..., None]
    return np.clip(stained, 0, 1).astype(np.float32), alpha


def missing(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A chipped-out region: texture gone, a dark cavity with a lit rim and a shadowed edge."""

    def draw(canvas: ImageDraw.ImageDraw, scale: int, rng: np.random.Generator) -> None:
        centre = _centre(rng, 50)
        count = int(rng.integers(7, 12))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        radii = rng.uniform(8, 22, count)
        outline = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        points = [tuple(point * scale) for point in outline]
        canvas.polygon(points, fill=255)

    alpha = _alpha(draw, rng, 0.6)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cavity = 0.16 + 0.05 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 0.01, (SIZE, SIZE))
    shade = np.roll(alpha, (2, 2), axis=(0, 1))
    tone = image.reshape(-1, 3).mean(axis=0) / max(float(image.mean()), 1e-3)
    out = image * (1 - alpha[..., None]) + (cavity[..., None] * tone) * alpha[..., None]
    rim = np.clip(alpha - shade, 0, 1)[..., None]
    out = out * (1 - 0.5 * rim) + 0.85 * 0.5 * rim
    return np.clip(out, 0, 1).astype(np.float32), alpha


def _blend(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    mixed = image * (1 - alpha[..., None]) + colour.astype(np.float32) * alpha[..., None]
    return np.clip(mixed, 0, 1).astype(np.float32)


MAKERS = {"scratch": scratch, "crack": crack, "spot": spot, "stain": stain, "missing": missing}


def save_jpeg(image: np.ndarray, path: Path) -> None:
    """Save as JPEG (quality 88, no metadata) deterministically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buffer, "JPEG", quality=88)
    path.write_bytes(buffer.getvalue())


def save_mask(alpha: np.ndarray, path: Path) -> None:
    """Save the defect mask (255 where the defect is visible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(((alpha > 0.25) * 255).astype(np.uint8)).save(path, optimize=True)


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    """Write rows as UTF-8 CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def generate(
    out: Path,
    seed: int,
    n_train: int = 80,
    n_valid: int = 20,
    n_bad: int = 12,
    n_inf_ok: int = 12,
    n_inf_ng: int = 6,
    product: str = "gravel",
) -> None:
    """Write the dataset.

    Args:
        out: Destination folder (replaced).
        seed: Random seed.
        n_train: Good images in the train split.
        n_valid: Good images in the valid split.
        n_bad: Defective validation images.
        n_inf_ok: Good inference images.
        n_inf_ng: Defective inference images.
        product: Which product to photograph (see :func:`load_product`).
    """
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    item = load_product(product)
    train, inference = out / "train", out / "inference"
    rows: list[dict[str, str]] = []
    for i in range(n_train + n_valid):
        name = f"good/good_{i:03d}.jpg"
        save_jpeg(good_image(item, rng), train / name)
        rows.append(
            {
                "label": "good",
                "image_path": name,
                "split": "train" if i < n_train else "valid",
                "defect_type": "",
                "mask_path": "",
            }
        )
    for i in range(n_bad):
        kind = DEFECTS[i % len(DEFECTS)]
        image, alpha = MAKERS[kind](good_image(item, rng), rng)
        name, mask = f"abnormal/bad_{i:03d}.jpg", f"abnormal/masks/bad_{i:03d}.png"
        save_jpeg(image, train / name)
        save_mask(alpha, train / mask)
        rows.append({"label": "bad", "image_path": name, "split": "valid", "defect_type": kind, "mask_path": mask})
    write_csv(train / "train.csv", rows, ["label", "image_path", "split", "defect_type", "mask_path"])
    rows = []
    for i in range(n_inf_ok):
        name = f"ok_{i:03d}.jpg"
        save_jpeg(good_image(item, rng), inference / name)
        rows.append({"label": "good", "image_path": name, "defect_type": "", "mask_path": ""})
    for i in range(n_inf_ng):
        kind = DEFECTS[(i + 2) % len(DEFECTS)]
        image, alpha = MAKERS[kind](good_image(item, rng), rng)
        name, mask = f"ng_{i:03d}.jpg", f"masks/ng_{i:03d}.png"
        save_jpeg(image, inference / name)
        save_mask(alpha, inference / mask)
        rows.append({"label": "bad", "image_path": name, "defect_type": kind, "mask_path": mask})
    write_csv(inference / "inference.csv", rows, ["label", "image_path", "defect_type", "mask_path"])


def main() -> None:
    """Command line: ``python solution/make_sample_data.py [--out DIR] [--seed N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "sample_data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generate(args.out, args.seed)
    print(f"sample data written to {args.out}")


if __name__ == "__main__":
    main()
