"""The threshold sweep as a line chart, drawn with Pillow.

A training run draws one small chart: four metrics against the threshold, the chosen threshold marked.
matplotlib would cost about 0.6 s of every training process here (its import and one figure), a twentieth
of a small PatchCore run; Pillow is loaded already and draws this in a few milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = (800, 450)
MARGIN = {"left": 70, "right": 20, "top": 40, "bottom": 60}
Y_RANGE = (-0.02, 1.02)
# (column, colour): matplotlib's first four default line colours, so the chart reads as it always did
SERIES = (("accuracy", "#1f77b4"), ("precision", "#ff7f0e"), ("recall", "#2ca02c"), ("f1", "#d62728"))
GRID = "#e5e5e5"
INK = "#222222"


def nice_ticks(low: float, high: float, most: int = 7) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) inside ``[low, high]``, at most ``most`` of them.

    Args:
        low: Lower end of the axis.
        high: Upper end (equal to ``low`` gives that one value).
        most: The largest number of ticks.

    Returns:
        The ticks, ascending.
    """
    span = high - low
    if not math.isfinite(span) or span <= 0:
        return [low]
    power = 10.0 ** math.floor(math.log10(span / most))
    step = next(power * m for m in (1, 2, 5, 10) if span / (power * m) <= most)
    first = math.ceil(low / step - 1e-9)
    ticks = [round((first + k) * step, 12) for k in range(most + 2)]
    return [t for t in ticks if low - 1e-9 * step <= t <= high + 1e-9 * step]


def _label(value: float) -> str:
    """A tick label: up to four significant digits, no trailing zeros."""
    return f"{value:.4g}"


def _dashed(draw: ImageDraw.ImageDraw, x: float, top: float, bottom: float, fill: str) -> None:
    """A vertical dashed line."""
    y = top
    while y < bottom:
        draw.line([(x, y), (x, min(y + 6, bottom))], fill=fill, width=1)
        y += 10


def draw_sweep(
    thresholds: Sequence[float] | np.ndarray,
    series: Mapping[str, Sequence[float] | np.ndarray],
    chosen: float,
    path: Path,
    title: str,
) -> Path:
    """Draw metrics against the threshold and mark the chosen threshold; write a PNG.

    Args:
        thresholds: The x values (ascending).
        series: Column name -> y values in [0, 1] (the columns of :data:`SERIES` that are present are drawn).
        chosen: The threshold to mark.
        path: PNG to write.
        title: Chart title.

    Returns:
        The path written.
    """
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=11)
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = SIZE[0] - MARGIN["right"], SIZE[1] - MARGIN["bottom"]
    xs = np.asarray(thresholds, dtype=float)
    finite = xs[np.isfinite(xs)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if math.isfinite(chosen):
        low, high = min(low, chosen), max(high, chosen)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.05
    low, high = low - pad, high + pad

    def px(x: float) -> float:
        return left + (x - low) / (high - low) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - Y_RANGE[0]) / (Y_RANGE[1] - Y_RANGE[0]) * (bottom - top)

    for tick in nice_ticks(0.0, 1.0, 6):
        draw.line([(left, py(tick)), (right, py(tick))], fill=GRID)
        draw.text((left - 6, py(tick)), _label(tick), fill=INK, font=small, anchor="rm")
    for tick in nice_ticks(low, high):
        draw.line([(px(tick), top), (px(tick), bottom)], fill=GRID)
        draw.text((px(tick), bottom + 6), _label(tick), fill=INK, font=small, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=INK)
    drawn = [(name, colour) for name, colour in SERIES if name in series]
    for name, colour in drawn:
        ys = np.asarray(series[name], dtype=float)
        points = [(px(x), py(y)) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2, joint="curve")
        elif points:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
    legend = [*drawn, (f"threshold {chosen:.4g}", INK)]
    if math.isfinite(chosen):
        _dashed(draw, px(chosen), top, bottom, INK)
    row = 18
    box_top = bottom - 10 - row * len(legend)
    draw.rectangle([left + 10, box_top, left + 180, bottom - 6], fill="white", outline=GRID)
    for k, (name, colour) in enumerate(legend):
        y = box_top + 4 + row * k + row / 2
        if k < len(drawn):
            draw.line([(left + 18, y), (left + 42, y)], fill=colour, width=2)
        else:
            for x in (left + 18, left + 28, left + 38):
                draw.line([(x, y), (x + 5, y)], fill=colour, width=1)
        draw.text((left + 50, y), name, fill=INK, font=small, anchor="lm")
    draw.text(((left + right) / 2, top / 2), title, fill=INK, font=font, anchor="mm")
    draw.text(
        ((left + right) / 2, SIZE[1] - 16),
        "raw anomaly score threshold (NG when score >= threshold)",
        fill=INK,
        font=font,
        anchor="mm",
    )
    caption = "validation metric"
    box = draw.textbbox((0, 0), caption, font=font)
    upright = Image.new("RGB", (int(box[2] - box[0]) + 4, int(box[3] - box[1]) + 6), "white")
    ImageDraw.Draw(upright).text((2, 2 - box[1]), caption, fill=INK, font=font)
    turned = upright.rotate(90, expand=True)
    image.paste(turned, (8, int((top + bottom) / 2 - turned.height / 2)))
    image.save(path)
    return path
