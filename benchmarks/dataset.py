"""The benchmark dataset: several products, each with 200+ OK training images and a 100-image test set.

Each product folder holds ``train/`` (train.csv with a train/valid split and masks) and ``test/``
(inference.csv with labels and masks, half defective), made by ``solution/make_sample_data.py``'s
generator with one seed per product. Folders are reused when their stamp matches.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "solution"))

import make_sample_data  # noqa: E402

PRODUCTS = ("gravel", "brick", "grass", "coffee")
COUNTS = {"n_train": 200, "n_valid": 20, "n_bad": 10, "n_inf_ok": 50, "n_inf_ng": 50}


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
            stamp_file = target / "stamp.json"
            if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp):
                make_sample_data.generate(target, seed, product=product, **counts)
                shutil.move(str(target / "inference"), str(target / "test"))
                stamp_file.write_text(json.dumps(stamp))
            made[product, sample] = target
    return made
