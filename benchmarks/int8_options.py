"""Which NNCF quantisation settings keep the product FastFlow's int8 graph closest to its fp32 graph.

Reads the FastFlow models that ``python -m benchmarks.export_speed`` trained and exported (the accuracy
benchmark's generated products, ``results/export-speed/<product>/fastflow``), quantises each model's fp32
OpenVINO graph once per setting (calibrated on its OK training images, as the train step does) and scores the
validation images (20 OK + 10 NG: what the int8 gate sees) and the test images (50 OK + 50 NG: what it never
sees) through both graphs. Reported per setting: image AUROC of both, its drop, and how faithfully the int8
scores follow the fp32 ones on the test images (Spearman rank correlation, largest difference relative to the
fp32 score range): a fidelity measure that needs no labels and is far less noisy than an AUROC on 10 NG images.

    .venv/bin/python -m benchmarks.int8_options [--products gravel grass] [--settings performance ...]

Rows go to ``results/int8-options-rows.jsonl``; the table to ``BENCHMARKS.md`` ("int8: quantisation settings").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from benchmarks.harness.data import ok_training_images
from benchmarks.harness.paths import RESULTS
from benchmarks.harness.report import add_report_options, write_section
from benchmarks.harness.rows import append_rows, utc_stamp

MODELS = RESULTS / "export-speed"
# setting -> (NNCF preset, the train step's int8 scope it quantises in, full bias correction)
SETTINGS = {
    "performance": ("PERFORMANCE", "graph", False),  # the train step's first attempt
    "performance, flows fp32": ("PERFORMANCE", "backbone", False),  # its second
    "performance, flows and depthwise fp32": ("PERFORMANCE", "dense", False),  # its third
    "mixed": ("MIXED", "graph", False),
    "mixed, flows fp32": ("MIXED", "backbone", False),
    "performance, full bias correction": ("PERFORMANCE", "graph", True),
}


def _images(product: str) -> dict[str, Any]:
    plan = yaml.safe_load((MODELS / product / "fastflow" / "experimental_plan.yaml").read_text(encoding="utf-8"))
    paths = {key: value for entry in plan["external_path"] for key, value in entry.items()}
    train = Path(paths["load_train_data_path"])
    csv = next(train.glob("*.csv"))
    table = pd.read_csv(csv, dtype=str)
    test = train.parent / "test"
    tested = pd.read_csv(next(test.glob("*.csv")), dtype=str)
    valid = table[table["split"] == "valid"]
    return {
        "calibration": [str(path) for path in ok_training_images(train, csv.name)],
        "valid": [str(train / p) for p in valid["image_path"]],
        "valid_ng": (valid["label"] != "good").to_numpy(),
        "test": [str(test / p) for p in tested["image_path"]],
        "test_ng": (tested["label"] != "good").to_numpy(),
    }


def _scores(scorer: Any, files: list[str]) -> np.ndarray:
    from vad.images import read_image

    return np.concatenate(
        [scorer.score_images([read_image(f) for f in files[i : i + 4]], False)[0] for i in range(0, len(files), 4)]
    )


def _timed_scores(scorer: Any, files: list[str]) -> tuple[np.ndarray, float]:
    """Scores of ``files`` and the images/s of scoring them (decode included, batches of 4)."""
    started = time.perf_counter()
    scores = _scores(scorer, files)
    return scores, len(files) / (time.perf_counter() - started)


def _quantize(model: Any, files: list[str], size: tuple[int, int], setting: str) -> Any:
    from vad.export.int8 import CALIBRATION_IMAGES, int8_ignored_scope, quiet
    from vad.images import model_pixels, read_image

    preset, scope, full_bias = SETTINGS[setting]
    with quiet():
        import nncf

        options: dict[str, Any] = {"preset": getattr(nncf.QuantizationPreset, preset)}
        ignored = int8_ignored_scope(nncf, scope)
        if ignored is not None:
            options["ignored_scope"] = ignored
        if full_bias:
            options["fast_bias_correction"] = False
        chosen = files[:CALIBRATION_IMAGES]
        dataset = nncf.Dataset(chosen, lambda path: model_pixels(read_image(path), size)[None])
        return nncf.quantize(model, dataset, subset_size=len(chosen), **options)


def measure(product: str, settings: list[str], work: Path) -> list[dict[str, Any]]:
    """The rows of one product: fp32, then each setting.

    Args:
        product: The product.
        settings: Names from :data:`SETTINGS`.
        work: Where the int8 graphs are written.

    Returns:
        The rows.
    """
    from vad.export.gates import fidelity
    from vad.export.runtime import OPENVINO, OPENVINO_INT8, ExportedScorer, import_openvino, runner
    from vad.metrics import auroc

    models = MODELS / product / "fastflow" / "train_artifacts" / "models"
    graph = models / "export" / OPENVINO.file
    if not graph.is_file():
        msg = f"no exported FastFlow graph at {graph}: run 'python -m benchmarks.export_speed' first"
        raise SystemExit(msg)
    config = json.loads((models / "train" / "train_config.json").read_text(encoding="utf-8"))
    size = tuple(config["model"]["input_size"])
    images = _images(product)
    fp32 = ExportedScorer(runner(OPENVINO, graph), size)
    valid, (test, fp32_rate) = _scores(fp32, images["valid"]), _timed_scores(fp32, images["test"])
    base = {"valid": auroc(images["valid_ng"], valid), "test": auroc(images["test_ng"], test)}
    rows = [
        {
            "product": product,
            "setting": "fp32",
            "valid_auroc": base["valid"],
            "test_auroc": base["test"],
            "test_images_per_s": fp32_rate,
        }
    ]
    openvino = import_openvino()
    model = openvino.Core().read_model(str(graph))
    work.mkdir(parents=True, exist_ok=True)
    for setting in settings:
        started = time.perf_counter()
        path = work / f"{product}-{setting.replace(' ', '_').replace(',', '')}.xml"
        openvino.save_model(_quantize(model, images["calibration"], size, setting), str(path), compress_to_fp16=False)
        seconds = time.perf_counter() - started
        int8 = ExportedScorer(runner(OPENVINO_INT8, path), size)
        found_valid, (found_test, rate) = _scores(int8, images["valid"]), _timed_scores(int8, images["test"])
        on_test = fidelity(test, found_test)
        rows.append(
            {
                "product": product,
                "setting": setting,
                "valid_auroc": auroc(images["valid_ng"], found_valid),
                "test_auroc": auroc(images["test_ng"], found_test),
                "valid_drop": base["valid"] - auroc(images["valid_ng"], found_valid),
                "test_drop": base["test"] - auroc(images["test_ng"], found_test),
                "rank_correlation_test": on_test["rank_correlation"],
                "max_relative_difference_test": on_test["largest_relative_difference"],
                "rank_correlation_valid": fidelity(valid, found_valid)["rank_correlation"],
                "test_images_per_s": rate,
                "quantise_s": round(seconds, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    """Measure the settings on each product and write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", nargs="+", default=["gravel", "grass"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    add_report_options(parser, "int8: quantisation settings")
    args = parser.parse_args()
    rows = [row for product in args.products for row in measure(product, args.settings, RESULTS / "int8")]
    stamp = utc_stamp()
    append_rows(RESULTS / "int8-options-rows.jsonl", [{**row, "finished": stamp} for row in rows], echo=False)
    lines = [
        f"Command: `python -m benchmarks.int8_options --products {' '.join(args.products)}`",
        "",
        "The product default FastFlow (tf_efficientnet_lite0) of the accuracy benchmark's generated products, as "
        "`benchmarks.export_speed` trained and exported it; each setting quantises its fp32 OpenVINO graph "
        "with NNCF on its OK training images. Validation: the 20 OK + 10 NG images the int8 gate judges (one "
        "swapped OK/NG pair moves AUROC by 0.005); test: 50 OK + 50 NG images no step saw. Drops are fp32 minus "
        "int8 (negative: int8 scored higher). Fidelity on the test images: Spearman rank correlation of the int8 "
        "scores with the fp32 ones, and their largest difference relative to the fp32 score range; the rank "
        "correlation on the validation images too (what the train step's gate reports). images/s: the 100 test "
        "images scored in batches of 4, decode included, one pass (noisy).",
        "",
        "| product | setting | validation AUROC (drop) | test AUROC (drop) | rank correlation test (validation) "
        "| largest difference | images/s | quantise s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["setting"] == "fp32":
            lines.append(
                f"| {row['product']} | fp32 | {row['valid_auroc']:.4f} | {row['test_auroc']:.4f} | 1 | 0 | "
                f"{row['test_images_per_s']:.1f} | |"
            )
            continue
        lines.append(
            f"| {row['product']} | {row['setting']} | {row['valid_auroc']:.4f} ({row['valid_drop']:+.4f}) | "
            f"{row['test_auroc']:.4f} ({row['test_drop']:+.4f}) | {row['rank_correlation_test']:.4f} "
            f"({row['rank_correlation_valid']:.4f}) | {row['max_relative_difference_test']:.3f} | "
            f"{row['test_images_per_s']:.1f} | {row['quantise_s']:.0f} |"
        )
    write_section(args.benchmarks_file, args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
