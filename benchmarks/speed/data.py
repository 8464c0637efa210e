"""The speed benchmark's gravel images, and anomalib's folder layout of the same files (hard links)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness.data import generate, link_files, ok_training_images, stamped
from benchmarks.speed.settings import WORK


def build_data(n_train: int, seed: int = 1000) -> Path:
    """Generate (or reuse) a gravel dataset and anomalib's folder layout of the same files.

    Args:
        n_train: OK training images.
        seed: Data seed.

    Returns:
        The dataset folder (``train/``, ``test/``, ``one/``, ``unlabelled/``, ``anomalib/``).
    """
    counts = {"n_train": n_train, "n_valid": 20, "n_bad": 10, "n_inf_ok": 50, "n_inf_ng": 50}

    def build(target: Path) -> None:
        generate(target, seed, counts)
        _anomalib_layout(target)
        link_files(sorted((target / "test").glob("ng_*.jpg"))[:1], target / "one")

    target = stamped(WORK / "data" / f"gravel-{n_train}", {"n_train": n_train, "seed": seed}, build)
    unlabelled(target / "test", target / "unlabelled")  # the test images again, no labels
    return target


def unlabelled(images: Path, folder: Path) -> None:
    """Hard links of the JPEGs in ``images`` in a new ``folder`` without a CSV (a production inference run).

    Args:
        images: A folder of JPEGs.
        folder: The new folder (left as it is when it exists).
    """
    if not folder.is_dir():
        link_files(sorted(images.glob("*.jpg")), folder)


def _anomalib_layout(target: Path) -> None:
    """Hard links of the same images in the folders anomalib's ``Folder`` datamodule reads."""
    import pandas as pd

    test = pd.read_csv(target / "test" / "inference.csv")
    places = {
        "train_good": ok_training_images(target / "train"),
        "test_good": [target / "test" / path for path in test[test["label"] == "good"]["image_path"]],
        "test_bad": [target / "test" / path for path in test[test["label"] != "good"]["image_path"]],
    }
    for name, paths in places.items():
        link_files(paths, target / "anomalib" / name)
