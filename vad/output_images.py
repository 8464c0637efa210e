"""Scored images kept in ``output/`` next to ``output.csv``: the edge result's picture and data for retraining.

The reference guide keeps "original images for retraining in the output folder" of the inference pipeline, and
ALO's Edge SDK (PyPI ``mellerikat-edge`` 1.0.7) shows one of them beside the verdict: its ALO-v2 upload zips
``inference_artifacts/`` and names as the result picture the file that ``glob('output/*.png')`` (then ``*.jpg``,
``*.jpeg``, ``*.gif``, ``*.bmp``) finds: lower-case extensions, no name that starts with a dot, and exactly one
(with several it fails: it logs through a ``logger`` its module never defines). Its ALO-v3 parser reads the same
zip and also takes ``.tif``, ``.tiff`` and ``.webp``, in any case.

So the first ``limit`` scored images, in input order, are copied byte for byte under a sanitised name with a
lower-case extension; a TIFF or WebP image, which the v2 glob would not find, is written as a lossless PNG
instead. They are copied, not hard-linked: an edge camera that rewrites its input file in place would otherwise
rewrite every earlier run's picture in ``history/`` too. ``output/output_images.json`` lists which row of
``output.csv`` each picture shows (JSON, not CSV: a second ``*.csv`` in ``output/`` would make the SDK fail the
same way), for whatever builds a retraining set from them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from vad.images import to_rgb

EDGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})  # the image kinds the SDK's v2 glob finds as they are
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})  # written to PNG unchanged; others as 8-bit RGB
MANIFEST = "output_images.json"
MAX_STEM = 100  # UTF-8 bytes of the original name kept (with the extension and a -N, far under the usual 255)
FALLBACK_STEM = "image"  # the stem of a name with nothing left once sanitised


@dataclass(frozen=True)
class OutputImage:
    """One scored image to keep in ``output/``.

    Attributes:
        row: Its 0-based row in ``output.csv`` (the input order).
        source: The image file that was scored.
        name: Its file name in ``output/``.
    """

    row: int
    source: str
    name: str


def safe_stem(path: str | Path) -> str:
    """The stem of an image's file name, safe as a file name of its own in ``output/``.

    Letters, digits, ``-``, ``_`` and ``.`` are kept and anything else (separators, spaces, control characters)
    becomes ``_``; leading dots are dropped (a dot file is hidden, and the SDK's glob skips it) and the result is
    cut to :data:`MAX_STEM` bytes of UTF-8 (whole characters).

    Args:
        path: The image's path (only its last component counts).

    Returns:
        The stem, never empty.
    """
    stem = PurePosixPath(str(path).replace("\\", "/")).stem
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem).lstrip(".")
    safe = safe.encode()[:MAX_STEM].decode(errors="ignore").rstrip(".")
    return safe or FALLBACK_STEM


def output_suffix(path: str | Path) -> str:
    """The extension of an image's copy in ``output/``: its own in lower case, or ``.png`` where it is re-encoded.

    Args:
        path: The image's path.

    Returns:
        The extension, with its dot.
    """
    suffix = Path(path).suffix.lower()
    return suffix if suffix in EDGE_EXTENSIONS else ".png"


def choose_output_images(files: Sequence[str | Path], limit: int) -> list[OutputImage]:
    """The first ``limit`` images in input order, each with a file name no other one has.

    A name already taken (two folders holding ``part.png``, or ``Part.PNG`` beside ``part.png`` on a file system
    that ignores case) gets ``-2``, ``-3``, ... before its extension.

    Args:
        files: The scored images, in the rows' order.
        limit: The most to keep (0: none).

    Returns:
        The images to keep, in input order.
    """
    chosen: list[OutputImage] = []
    taken: set[str] = set()
    for row, source in enumerate(files[: max(limit, 0)]):
        stem, suffix = safe_stem(source), output_suffix(source)
        name, count = f"{stem}{suffix}", 1
        while name.lower() in taken:
            count += 1
            name = f"{stem}-{count}{suffix}"
        taken.add(name.lower())
        chosen.append(OutputImage(row=row, source=str(source), name=name))
    return chosen


def save_output_image(source: Path, target: Path) -> None:
    """Copy a scored image to ``target``, or write it as a lossless PNG when ``target`` is a ``.png`` it is not.

    Args:
        source: The scored image.
        target: Its file in ``output/`` (the folder is created if needed).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix.lower() == target.suffix.lower():
        shutil.copyfile(source, target)
        return
    with Image.open(source) as image:
        picture = image if image.mode in PNG_MODES else to_rgb(image)
        picture.save(target, format="PNG")


def write_manifest(images: Sequence[OutputImage], path: Path) -> None:
    """Write ``output_images.json``: for each kept picture, its file name, its ``output.csv`` row and its source.

    Args:
        images: The kept images.
        path: The manifest file.
    """
    entries = [{"file": image.name, "row": image.row, "source": image.source} for image in images]
    path.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
