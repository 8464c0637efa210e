"""Accuracy benchmark: every model x backbone on every product, run through main.py as a user would.

For each product a plan is written whose train data is the product's ``train/`` folder (the threshold
is set on its 20 OK + 10 NG validation images) and whose inference data is the held-out ``test/``
folder (50 OK + 50 NG, with masks). Image AUROC, F1 at the trained threshold and pixel AUROC come
from ``inference_artifacts/score/inference_score.csv``; times from each run's history record.

    .venv/bin/python -m benchmarks.accuracy [--products gravel brick] [--models patchcore] [--backbones ...]
        [--pairs patchcore/mobilenetv2_100 fastflow/tf_efficientnet_lite0] [--samples 3] [--reuse]

``--samples N`` scores N independent draws of each product (other training, validation and test
images) and reports their mean: one draw of 100 test images moves image AUROC by a few hundredths.
Each run keeps its plan and result in its work folder; ``--reuse`` takes a finished run's result
instead of running it again when its plan is unchanged (only valid while the code is unchanged).
The table is written to ``BENCHMARKS.md`` (section "Accuracy") and ``results/accuracy.csv``
(rows are appended to ``results/accuracy-rows.jsonl`` as they finish).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from benchmarks.harness import data as dataset
from benchmarks.harness.measure import error_tail, main_py, run_timed, run_times
from benchmarks.harness.paths import RESULTS
from benchmarks.harness.plans import bundled_plan, inference_args, keep_result, reused_result, set_data, train_args
from benchmarks.harness.report import add_report_options, command_line, write_section
from benchmarks.harness.rows import append_rows
from vad.models import MODELS as REGISTERED

BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "mobilenetv2_100")
MODELS = tuple(REGISTERED)  # every registered model


@dataclass(frozen=True)
class Setting:
    """What one benchmark run changes in the bundled plan."""

    model: str
    backbone: str
    model_parameters: dict = field(default_factory=dict)
    img_size: list[int] | None = None
    train_args: dict = field(default_factory=dict)


def make_plan(product_dir: Path, setting: Setting) -> dict:
    """A plan like the bundled one, pointed at a product and set to one model and backbone.

    Args:
        product_dir: A product folder (``train/``, ``test/``).
        setting: What the run changes.

    Returns:
        The plan as a dict.
    """
    plan = set_data(bundled_plan(), product_dir / "train", product_dir / "test")
    args = train_args(plan)
    args["model_name"] = setting.model
    args["save_validation_heatmap"] = False
    if setting.img_size:
        args["img_size"] = setting.img_size if len(setting.img_size) == 2 else setting.img_size[0]
    args.update(setting.train_args)
    args["model_parameters"] = {
        f"{setting.model}_backbone": setting.backbone,
        **setting.model_parameters,
    }
    inference_args(plan)["save_anomaly_maps"] = False
    return plan


def run_one(work: Path, product_dir: Path, setting: Setting, reuse: bool = False) -> dict:
    """Train and infer once through main.py; return the test metrics and times.

    Args:
        work: The run's folder.
        product_dir: A product folder.
        setting: What the run changes.
        reuse: Return a finished run's result when its plan is unchanged.

    Returns:
        Image AUROC, F1, pixel AUROC and AUPRO, the times (or ``error``).
    """
    reused = reused_result(work, make_plan(product_dir, setting), reuse)
    if reused is not None:
        return reused
    result, process_s = run_timed(main_py("--mode", "all", "--config", str(work / "experimental_plan.yaml")))
    if result.returncode != 0:
        return {"error": error_tail(result, 1)}
    scores = pd.read_csv(work / "inference_artifacts/score/inference_score.csv").iloc[0].to_dict()
    row = {
        "image_auroc": scores["auroc"],
        "f1": scores["f1"],
        "pixel_auroc": scores.get("pixel_auroc", float("nan")),
        "pixel_aupro": scores.get("pixel_aupro", float("nan")),
        **run_times(work),
        "process_s": process_s,
    }
    return keep_result(work, row)


def table(frame: pd.DataFrame) -> str:
    """Markdown tables: per product (mean over data samples) and the average, for each model and backbone.

    Args:
        frame: One row per model, backbone, product and sample.

    Returns:
        The markdown.
    """
    lines = []
    metrics = ["image_auroc", "f1", "pixel_auroc", "train_s", "inference_s"]
    samples = frame["sample"].nunique()
    for (model, backbone), group in frame.groupby(["model", "backbone"], sort=False):
        lines.append(f"\n**{model} / {backbone}**\n")
        lines.append(
            "| product | image AUROC | per sample | F1 @ trained threshold | pixel AUROC | train s "
            "| inference s (100 img) |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for product, runs in group.groupby("product", sort=False):
            means = runs[metrics].mean()
            each = " / ".join(_fmt(value) for value in runs.sort_values("sample")["image_auroc"])
            lines.append(
                f"| {product} | {_fmt(means['image_auroc'])} | {each} | "
                + " | ".join(_fmt(means[m]) for m in metrics[1:])
                + " |"
            )
        per_sample = group.groupby("sample")["image_auroc"].mean()
        lines.append(
            f"| **average** | {_fmt(group['image_auroc'].mean())} | "
            + " / ".join(_fmt(value) for value in per_sample)
            + " | "
            + " | ".join(_fmt(group[m].mean()) for m in metrics[1:])
            + " |"
        )
    summary = frame.groupby(["model", "backbone"], sort=False)[metrics].mean().reset_index()
    lines.append(f"\n**Averages over products and {samples} data sample(s)**\n")
    lines.append("| model | backbone | image AUROC | F1 | pixel AUROC | train s | inference s |")
    lines.append("|---|---|---|---|---|---|---|")
    for row in summary.itertuples():
        lines.append(f"| {row.model} | {row.backbone} | " + " | ".join(_fmt(getattr(row, m)) for m in metrics) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "n/a" if pd.isna(value) else (f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}")


def main() -> None:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", nargs="+", default=list(dataset.PRODUCTS))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--work", type=Path, default=RESULTS / "accuracy")
    parser.add_argument("--img-size", nargs="+", type=int, help="img_size: one int (shorter side) or height width")
    parser.add_argument("--train", nargs="*", default=[], help="extra train args, key=value (YAML values)")
    parser.add_argument("--set", nargs="*", default=[], help="extra model_parameters, key=value (YAML values)")
    parser.add_argument(
        "--pairs",
        nargs="+",
        metavar="MODEL/BACKBONE",
        help="run exactly these model/backbone pairs instead of every --models x --backbones",
    )
    parser.add_argument("--samples", type=int, default=1, help="independent data draws per product")
    add_report_options(parser, "Accuracy")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs whose plan is unchanged")
    args = parser.parse_args()
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    train_args = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.train)}
    # resolved: a run from another checkout whose results/ links here writes the same plan paths
    products = dataset.build((RESULTS / "data").resolve(), tuple(args.products), samples=args.samples)
    rows = []
    log = RESULTS / "accuracy-rows.jsonl"
    if args.pairs:
        pairs = [tuple(pair.split("/", 1)) for pair in args.pairs]
        if any(len(pair) != 2 or pair[0] not in MODELS for pair in pairs):
            parser.error(f"--pairs takes MODEL/BACKBONE with MODEL one of {', '.join(MODELS)}")
    else:
        pairs = [(model, backbone) for model in args.models for backbone in args.backbones]
    for model, backbone in pairs:
        for (product, sample), folder in products.items():
            row = {"model": model, "backbone": backbone, "product": product, "sample": sample}
            row.update(
                run_one(
                    args.work / folder.name / f"{model}-{backbone}",
                    folder,
                    Setting(model, backbone, overrides, args.img_size, train_args),
                    args.reuse,
                )
            )
            rows.append(row)
            append_rows(log, [row])
    frame = pd.DataFrame(rows)
    frame.to_csv(RESULTS / "accuracy.csv", index=False)
    body = f"Command: `{command_line('benchmarks.accuracy')}`\n" + table(frame)
    write_section(args.benchmarks_file, args.section, body)


if __name__ == "__main__":
    main()
