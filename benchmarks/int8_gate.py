"""int8 fidelity gate: per product and scope, what the gate keeps and refuses, and what that costs on unseen images.

For each target, the product default FastFlow (``model_name: fastflow``, the bundled plan's settings) is trained
through ``main.py --mode train`` (OpenVINO fp32 export, heatmaps off). Targets:

- the accuracy benchmark's generated products (``--products``; 200 OK training images, 20 OK + 10 NG
  validation images, 50 OK + 50 NG test images);
- the real-defect development benchmark (``--splits``: seeded splits of the monocrystalline cells of
  ``elpv-dataset``, :mod:`benchmarks.real_defects`; 200 OK training, 20 OK + 20 NG validation, the rest
  tested balanced). The polycrystalline cells are reserved for acceptance and never read. With ``--reuse``,
  the FastFlow runs of ``python -m benchmarks.real_defects --plans fastflow`` are reused (the same model).

Then, in this process, every int8 scope of the ladder (:data:`vad.export.int8.INT8_SCOPES`) and one damaged
graph (:data:`DAMAGED`: the last scope calibrated on NG images only) is quantised with the product's own code
(:func:`vad.export.int8.split_images` for the calibration/gate split, :func:`vad.export.int8.quantize_int8`)
and judged by the product's own gate
(:func:`vad.export.gates.int8_gate` and :func:`vad.export.gates.with_int8_ood`) on the gate images: the
held-out OK training images and the validation images. The reference is the OpenVINO fp32 graph, which the
fp32 parity gate proved equal to torch within 1e-3 of the score range (the train step's gate uses torch
itself). A reference row comes first (:data:`NOISE`): the fp32 graph itself on the same images with invisible
noise added, judged by the same gate: the gate's noise floor. Reported per scope: kept or refused and why, the
fidelity figures, the validation AUROC of both (with its resolution), the **test** image AUROC of both on images
the gate never sees, and the images/s of both graphs on :data:`SPEED_IMAGES` of the test images (already read;
resize and scoring in batches of :data:`BATCH`, the two graphs taking turns for :data:`ROUNDS` rounds, the best
round each). The ladder keeps the first scope that passes.

    .venv/bin/python -m benchmarks.int8_gate [--products gravel brick grass coffee] [--splits 3] [--reuse]

Rows go to ``results/int8-gate-rows.jsonl``; the table to ``BENCHMARKS.md`` ("int8: the fidelity gate").
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import real_defects
from benchmarks.harness.data import build, ok_training_images
from benchmarks.harness.measure import error_tail, main_py, run_timed
from benchmarks.harness.paths import RESULTS
from benchmarks.harness.plans import bundled_plan, save_plan, set_data, train_args
from benchmarks.harness.report import add_report_options, command_line, write_section
from benchmarks.harness.rows import append_rows, utc_stamp

WORK = RESULTS / "int8-gate"
BATCH = 4
ROUNDS = 3
SPEED_IMAGES = 100  # test images the speed is measured on at most (evenly spaced)
OK_LABEL = "good"
# Damaged graphs the gate must refuse: the ladder's most faithful scope, calibrated on the NG validation images only.
DAMAGED = "damaged: dense-stem calibrated on NG images only"
# The gate's noise floor: the fp32 graph itself, on the same images with every pixel moved by -1, 0 or +1 grey
# level at random (invisible), judged by the same gate against its own scores of the untouched images.
NOISE = "reference: fp32 on images with ±1 grey-level noise"


@dataclass
class Target:
    """One trained model and its images.

    Attributes:
        name: ``gravel``, ``cells split 0``, ...
        models: The trained ``models`` folder.
        ok_training: OK training images, in the train step's order.
        validation: Validation images.
        validation_ng: Their labels (True: NG).
        test: Test images (never seen by any step).
        test_ng: Their labels.
    """

    name: str
    models: Path
    ok_training: list[str]
    validation: list[str]
    validation_ng: np.ndarray
    test: list[str]
    test_ng: np.ndarray


def _train(work: Path, train: Path, reuse: bool) -> Path:
    """Train the product default FastFlow on a data folder through main.py (reused when asked and present)."""
    models = work / "train_artifacts" / "models"
    if reuse and (models / "export" / "model.xml").is_file():
        return models
    plan = set_data(bundled_plan(), train)
    args = train_args(plan)
    args.update(model_name="fastflow", export=["openvino"], precision="fp32", save_validation_heatmap=False)
    path = save_plan(plan, work)
    done, seconds = run_timed(main_py("--mode", "train", "--config", str(path)))
    if done.returncode != 0:
        msg = f"training in {work} failed: {error_tail(done)}"
        raise SystemExit(msg)
    print(f"  trained {work.name} in {seconds:.0f} s", flush=True)
    return models


def _split(train: Path, csv_name: str) -> tuple[list[str], np.ndarray]:
    table = pd.read_csv(train / csv_name, dtype=str, keep_default_na=False)
    valid = table[table["split"] == "valid"]
    return [str(train / name) for name in valid["image_path"]], (valid["label"] != OK_LABEL).to_numpy()


def generated_targets(products: list[str], reuse: bool) -> list[Target]:
    """The accuracy benchmark's generated products, each with its trained FastFlow.

    Args:
        products: Product names.
        reuse: Reuse trained models.

    Returns:
        The targets.
    """
    targets = []
    for (product, _), folder in build(WORK / "data", tuple(products)).items():
        train = folder / "train"
        validation, validation_ng = _split(train, "train.csv")
        tested = pd.read_csv(folder / "test" / "inference.csv", dtype=str, keep_default_na=False)
        targets.append(
            Target(
                product,
                _train(WORK / product, train, reuse),
                [str(path) for path in ok_training_images(train)],
                validation,
                validation_ng,
                [str(folder / "test" / name) for name in tested["image_path"]],
                (tested["label"] != OK_LABEL).to_numpy(),
            )
        )
    return targets


def cell_targets(splits: int, reuse: bool) -> list[Target]:
    """The real-defect development splits (monocrystalline cells), each with its trained FastFlow.

    Args:
        splits: How many seeded splits (seeds 0, 1, ...).
        reuse: Reuse trained models.

    Returns:
        The targets.
    """
    labels = real_defects.cells()
    targets = []
    shared = RESULTS / "real_defects"  # the real-defect benchmark's splits, and its FastFlow runs when reused
    for seed in range(splits):
        folder = real_defects.build_split(shared / "data" / f"split{seed}", labels, seed)
        train = folder / "train"
        validation, validation_ng = _split(train, "train.csv")
        tested = pd.read_csv(folder / "test" / "test.csv", dtype=str, keep_default_na=False)
        table = pd.read_csv(train / "train.csv", dtype=str, keep_default_na=False)
        ok = table[(table["split"] == "train") & (table["label"] == real_defects.OK_LABEL)]["image_path"]
        targets.append(
            Target(
                f"cells split {seed}",
                _train(shared / "fastflow" / f"split{seed}", train, reuse),
                [str(train / name) for name in ok],
                validation,
                validation_ng,
                [str(folder / "test" / name) for name in tested["image_path"]],
                (tested["label"] != real_defects.OK_LABEL).to_numpy(),
            )
        )
    return targets


def _scores(scorer: Any, pictures: list[Any], ood: Any) -> tuple[np.ndarray, np.ndarray | None]:
    raw, kept = [], []
    for start in range(0, len(pictures), BATCH):
        scores, _, descriptors = scorer.score_described(pictures[start : start + BATCH], False)
        raw.append(scores)
        if descriptors is not None:
            kept.append(descriptors)
    found = np.concatenate(raw).astype(np.float64)
    return found, (ood.scores(np.concatenate(kept)) if ood is not None and kept else None)


def _noisy(pictures: list[Any]) -> list[Any]:
    """The pictures with every pixel moved by -1, 0 or +1 grey level at random (seeded: the same each run)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    noisy = []
    for picture in pictures:
        pixels = np.asarray(picture, dtype=np.int16)
        moved = np.clip(pixels + rng.integers(-1, 2, pixels.shape), 0, 255).astype(np.uint8)
        noisy.append(Image.fromarray(moved))
    return noisy


def _speeds(scorers: dict[str, Any], pictures: list[Any]) -> dict[str, float]:
    """Images/s of each scorer on the same pictures: turns, :data:`ROUNDS` rounds, the best round each."""
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for name, scorer in scorers.items():
            started = time.perf_counter()
            for start in range(0, len(pictures), BATCH):
                scorer.score_images(pictures[start : start + BATCH], False)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    return {name: len(pictures) / seconds for name, seconds in best.items()}


def measure(target: Target, settings: list[str], graphs: Path) -> list[dict[str, Any]]:
    """Every scope (and damaged graph) of one target: gate figures, test AUROC and speed of both graphs.

    Args:
        target: The target.
        settings: Scope names (:data:`vad.export.int8.INT8_SCOPES`) and :data:`DAMAGED`.
        graphs: Where the int8 graphs are written.

    Returns:
        One row per setting.
    """
    from vad.export import gates, int8
    from vad.export.runtime import OPENVINO, OPENVINO_INT8, ExportedScorer, import_openvino, runner
    from vad.images import read_image
    from vad.metrics import auroc, rank_correlation
    from vad.models.saved import read_saved
    from vad.ood import OodCheck

    folder = target.models / "train"
    saved = read_saved(folder)
    calibration = saved.calibration
    size = (int(saved.spec.input_size[0]), int(saved.spec.input_size[1]))
    ood = OodCheck.load(folder)
    fp32_file = target.models / "export" / OPENVINO.file
    fp32 = ExportedScorer(runner(OPENVINO, fp32_file), size, None, ood is not None)
    calibration_files, held_out = int8.split_images(target.ok_training)
    gate_files = [*held_out, *target.validation]
    is_validation = np.arange(len(gate_files)) >= len(held_out)
    gate_pictures = [read_image(path) for path in gate_files]
    test_pictures = [read_image(path) for path in target.test]
    fp32_gate, fp32_ood = _scores(fp32, gate_pictures, ood)
    fp32_test, _ = _scores(fp32, test_pictures, None)
    fp32_auroc = auroc(target.test_ng, fp32_test)
    model = import_openvino().Core().read_model(str(fp32_file))
    graphs.mkdir(parents=True, exist_ok=True)
    rows = []
    ng_files = [path for path, ng in zip(target.validation, target.validation_ng, strict=True) if ng]
    for setting in settings:
        scope, files = (setting, calibration_files) if setting in int8.INT8_SCOPES else (int8.INT8_SCOPES[-1], ng_files)
        if setting in int8.INT8_SCOPES and not int8.scope_differs(model, setting):
            continue
        gate_in, test_in, quick, seconds = gate_pictures, test_pictures, fp32, 0.0
        if setting == NOISE:
            gate_in, test_in = _noisy(gate_pictures), _noisy(test_pictures)
        else:
            started = time.perf_counter()
            quantised = int8.quantize_int8(model, files, size, scope)
            seconds = time.perf_counter() - started
            path = graphs / f"{target.name.replace(' ', '-')}-{setting.split(':')[0].replace(' ', '-')}.xml"
            import_openvino().save_model(quantised, str(path), compress_to_fp16=False)
            quick = ExportedScorer(runner(OPENVINO_INT8, path), size, None, ood is not None)
        raw, found_ood = _scores(quick, gate_in, ood)
        labels = target.validation_ng
        figures = gates.int8_gate(fp32_gate, raw, is_validation, calibration, labels)
        if fp32_ood is not None and found_ood is not None:
            figures = gates.with_int8_ood(figures, fp32_ood, found_ood)
        test_raw, _ = _scores(quick, test_in, None)
        on_test = gates.fidelity(fp32_test, test_raw, calibration)
        ok_gate = ~is_validation.copy()
        ok_gate[is_validation] = ~target.validation_ng
        step = max(1, len(test_pictures) // SPEED_IMAGES)
        nan = float("nan")
        speed = (
            {"fp32": nan, "int8": nan}
            if setting == NOISE
            else _speeds({"fp32": fp32, "int8": quick}, test_pictures[::step][:SPEED_IMAGES])
        )
        row = {
            "target": target.name,
            "setting": setting,
            "kept": bool(figures["accepted"]),
            "reason": figures.get("reason", ""),
            "rank_correlation": figures["rank_correlation"],
            "largest_difference": figures["largest_difference"],
            "verdict_changes": figures["verdict_changes"],
            "verdict_changes_outside_tolerance": figures["verdict_changes_outside_tolerance"],
            "ood_flag_changes": figures.get("ood_flag_changes"),
            "gate_images": figures["images"],
            "held_out": figures["held_out_training_images"],
            "calibration_images": len(files),
            "valid_fp32_auroc": figures.get("fp32_auroc"),
            "valid_int8_auroc": figures.get("int8_auroc"),
            "auroc_resolution": figures.get("auroc_resolution"),
            "test_fp32_auroc": fp32_auroc,
            "test_int8_auroc": auroc(target.test_ng, test_raw),
            "test_images": len(target.test),
            "rank_correlation_ok_gate": rank_correlation(fp32_gate[ok_gate], raw[ok_gate]),
            "rank_correlation_validation": rank_correlation(fp32_gate[is_validation], raw[is_validation]),
            "test_rank_correlation": on_test["rank_correlation"],
            "test_largest_difference": on_test["largest_difference"],
            "fp32_images_per_s": speed["fp32"],
            "int8_images_per_s": speed["int8"],
            "quantise_s": seconds,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _ladder(rows: list[dict[str, Any]], scopes: tuple[str, ...]) -> dict[str, str]:
    """What the train step's ladder keeps per target: the first scope that passes, in ladder order."""
    kept: dict[str, str] = {}
    for row in rows:
        if row["setting"] in scopes and row["kept"] and row["target"] not in kept:
            kept[row["target"]] = row["setting"]
    return kept


def table(rows: list[dict[str, Any]], scopes: tuple[str, ...]) -> str:
    """The markdown table: one row per target and setting.

    Args:
        rows: :func:`measure`'s rows.
        scopes: The ladder's scopes, in order.

    Returns:
        The table and the ladder's outcome per target.
    """
    lines = [
        "| target | setting | gate | rank correlation | largest difference | verdict changes (outside) "
        "| validation AUROC fp32 / int8 (resolution) | test AUROC fp32 / int8 (drop) | images/s fp32 / int8 (ratio) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        valid = (
            f"{row['valid_fp32_auroc']:.3f} / {row['valid_int8_auroc']:.3f} ({row['auroc_resolution']:.4f})"
            if row["valid_fp32_auroc"] is not None
            else ""
        )
        drop = row["test_fp32_auroc"] - row["test_int8_auroc"]
        lines.append(
            f"| {row['target']} | {row['setting']} | {'**kept**' if row['kept'] else 'refused'} | "
            f"{row['rank_correlation']:.4f} | {row['largest_difference']:.3f} | "
            f"{row['verdict_changes']} ({row['verdict_changes_outside_tolerance']}) | {valid} | "
            f"{row['test_fp32_auroc']:.4f} / {row['test_int8_auroc']:.4f} ({drop:+.4f}) | "
            + (
                "n/a |"
                if row["setting"] == NOISE
                else f"{row['fp32_images_per_s']:.1f} / {row['int8_images_per_s']:.1f} "
                f"({row['int8_images_per_s'] / row['fp32_images_per_s']:.2f}x) |"
            )
        )
    lines += [
        "",
        "Where the rank correlation comes from (the same graphs): the gate images split into the OK ones (held-out "
        "training and validation OK) and the validation images; the test images, which no step sees, with their "
        "largest normalised-score difference.",
        "",
        "| target | setting | gate: all | gate: OK only | gate: validation | test | test largest difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['target']} | {row['setting']} | {row['rank_correlation']:.4f} | "
            f"{row['rank_correlation_ok_gate']:.4f} | {row['rank_correlation_validation']:.4f} | "
            f"{row['test_rank_correlation']:.4f} | {row['test_largest_difference']:.3f} |"
        )
    kept = _ladder(rows, scopes)
    targets = list(dict.fromkeys(row["target"] for row in rows))
    outcome = ", ".join(f"{name}: {kept.get(name, 'refused')}" for name in targets)
    return "\n".join(lines) + f"\n\nThe train step's ladder ({' > '.join(scopes)}) keeps: {outcome}."


def main() -> None:
    """Train the targets, measure every setting, write the section."""
    from vad.export.int8 import INT8_SCOPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", nargs="*", default=["gravel", "brick", "grass", "coffee"])
    parser.add_argument("--splits", type=int, default=3, help="real-defect splits (0: none)")
    parser.add_argument("--settings", nargs="+", default=[NOISE, *INT8_SCOPES, DAMAGED])
    parser.add_argument("--reuse", action="store_true", help="reuse trained models")
    add_report_options(parser, "int8: the fidelity gate")
    args = parser.parse_args()
    measured: list[Callable[[], list[Target]]] = [
        lambda: generated_targets(args.products, args.reuse),
        lambda: cell_targets(args.splits, args.reuse),
    ]
    rows: list[dict[str, Any]] = []
    for targets in measured:
        for target in targets():
            rows += measure(target, args.settings, WORK / "graphs")
    append_rows(RESULTS / "int8-gate-rows.jsonl", [{**row, "finished": utc_stamp()} for row in rows], echo=False)
    body = (
        f"Command: `{command_line('benchmarks.int8_gate')}`\n\n"
        "The product default FastFlow (tf_efficientnet_lite0, 8 flow steps, 256 px) of each target, trained by "
        "`main.py`. Each setting is quantised and gated by the product's own code; the gate images are every 4th "
        "OK training image (held out of calibration) and the validation images, the reference the OpenVINO fp32 "
        "graph. Gate: rank correlation at least 0.99, largest normalised-score difference at most 0.05, no "
        "validation verdict change outside 0.05 of the threshold, no OOD flag change outside 0.1 of its line. "
        "The first row of each target is the gate's noise floor: the fp32 graph itself on the same images with "
        "every pixel moved by -1, 0 or +1 grey level at random (invisible), judged by the same gate against its "
        "scores of the untouched images. Validation AUROC is information only (resolution: one swapped OK/NG "
        "pair). Test: images no step saw "
        "(generated: 50 OK + 50 NG; cells: the split's remaining cells, balanced). images/s: the test images, "
        "100 of them (evenly spaced), read beforehand, resized and scored in batches of 4, fp32 and int8 taking "
        "turns, best of 3 rounds."
        "\n\n" + table(rows, INT8_SCOPES)
    )
    write_section(args.benchmarks_file, args.section, body)
    print(table(rows, INT8_SCOPES))


if __name__ == "__main__":
    main()
