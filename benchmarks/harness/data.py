"""The benchmarks' generated images: products of ``solution/make_sample_data.py``, reused while their stamp matches.

The accuracy benchmarks' dataset is several products, each with 200+ OK training images and a 100-image test set:
each product folder holds ``train/`` (train.csv with a train/valid split and masks) and ``test/`` (inference.csv
with labels and masks, half defective), made by the generator with one seed per product. Other benchmarks
generate their own counts with :func:`generate` and link the same files into other folders with
:func:`link_files` (hard links: no copies).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from benchmarks.harness.paths import ROOT

sys.path.insert(0, str(ROOT / "solution"))

import make_sample_data

PRODUCTS = ("gravel", "brick", "grass", "coffee")
COUNTS = {"n_train": 200, "n_valid": 20, "n_bad": 10, "n_inf_ok": 50, "n_inf_ng": 50}
STAMP_FILE = "stamp.json"


def stamped(target: Path, stamp: dict, build: Callable[[Path], None]) -> Path:
    """A generated folder, built again only when its stamp (what it was built from) changed.

    Args:
        target: The folder.
        stamp: What it is built from (JSON-serialisable); written last, so a half-built folder is built again.
        build: Builds the folder's contents.

    Returns:
        The folder.
    """
    stamp_file = target / STAMP_FILE
    if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp):
        build(target)
        stamp_file.write_text(json.dumps(stamp))
    return target


def generate(target: Path, seed: int, counts: dict[str, int], product: str = "gravel", test: str = "test") -> None:
    """Generate one product's images: ``train/`` (with train.csv) and a labelled scoring folder.

    Args:
        target: The folder.
        seed: The data seed.
        counts: Image counts (``n_train``, ``n_valid``, ``n_bad``, ``n_inf_ok``, ``n_inf_ng``).
        product: A product of ``make_sample_data``.
        test: The scoring folder's name (the generator's own is ``inference``).
    """
    make_sample_data.generate(target, seed, **counts, product=product)
    if test != "inference":
        shutil.move(str(target / "inference"), str(target / test))


def link_files(files: Iterable[Path], folder: Path) -> Path:
    """Hard links of files in a folder (created when missing), under their own names.

    Args:
        files: The files.
        folder: The folder.

    Returns:
        The folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        os.link(file, folder / file.name)
    return folder


def ok_training_images(train: Path, csv_name: str = "train.csv") -> list[Path]:
    """The OK images of a train folder's ``train`` split.

    Args:
        train: A ``train/`` folder.
        csv_name: Its CSV.

    Returns:
        The image files, in the CSV's order.
    """
    import pandas as pd

    table = pd.read_csv(train / csv_name, dtype=str, keep_default_na=False)
    return [train / path for path in table[(table["label"] == "good") & (table["split"] == "train")]["image_path"]]


def product_seed(product: str, sample: int = 0) -> int:
    """The data seed of one sample of a product: fixed by its name, so a subset of products gets the same images.

    Args:
        product: A name from :data:`PRODUCTS`.
        sample: Which independent draw of the product's images (0, 1, 2, ...).

    Returns:
        The seed: 1000 + the product's place in :data:`PRODUCTS` + 100 per sample.
    """
    return 1000 + PRODUCTS.index(product) + 100 * sample


def build(
    folder: Path,
    products: tuple[str, ...] = PRODUCTS,
    counts: dict[str, int] | None = None,
    samples: int = 1,
) -> dict[tuple[str, int], Path]:
    """Generate (or reuse) the datasets: ``samples`` independent draws of each product.

    Args:
        folder: Where the products' folders go.
        products: Product names (see ``make_sample_data.load_product``).
        counts: Image counts (defaults to :data:`COUNTS`).
        samples: Draws per product (other training, validation and test images, same product).

    Returns:
        (product name, sample) -> its folder (with ``train/`` and ``test/``).
    """
    counts = counts or COUNTS
    made = {}
    for product in products:
        for sample in range(samples):
            target = folder / (product if sample == 0 else f"{product}-s{sample}")
            seed = product_seed(product, sample)
            stamp = {"product": product, "seed": seed, **counts}
            made[product, sample] = stamped(target, stamp, partial(generate, seed=seed, counts=counts, product=product))
    return made
