"""Accuracy benchmark: every model x backbone on every product, run through main.py as a user would.

For each product a plan is written whose train data is the product's ``train/`` folder (the threshold
is set on its 20 OK + 10 NG validation images) and whose inference data is the held-out ``test/``
folder (50 OK + 50 NG, with masks). Image AUROC, F1 at the trained threshold and pixel AUROC come
from ``inference_artifacts/output/inference_score.csv``; times from each run's history record.

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
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from benchmarks import dataset
from benchmarks.report import write_section
from vad.models import MODELS as REGISTERED

ROOT = Path(__file__).resolve().parents[1]
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
    """A plan like the bundled one, pointed at a product and set to one model and backbone."""
    plan = yaml.safe_load((ROOT / "experimental_plan.yaml").read_text(encoding="utf-8"))
    plan["external_path"] = [
        {"load_train_data_path": str(product_dir / "train")},
        {"load_inference_data_path": str(product_dir / "test")},
    ]
    for entry in plan["user_parameters"]:
        for steps in entry.values():
            for step in steps:
                if step["step"] == "train":
                    args = step["args"][0]
                    args["model_name"] = setting.model
                    args["save_validation_heatmap"] = False
                    if setting.img_size:
                        args["img_size"] = setting.img_size if len(setting.img_size) == 2 else setting.img_size[0]
                    args.update(setting.train_args)
                    args["model_parameters"] = {
                        f"{setting.model}_backbone": setting.backbone,
                        **setting.model_parameters,
                    }
                if step["step"] == "inference":
                    step["args"][0]["save_anomaly_maps"] = False
    return plan


def seconds(record_path: Path) -> float:
    """Wall time of a run from its experimental_history.json."""
    record = json.loads(record_path.read_text(encoding="utf-8"))
    start, end = (datetime.fromisoformat(record[key]) for key in ("start_time", "end_time"))
    return (end - start).total_seconds()


def run_one(work: Path, product_dir: Path, setting: Setting, reuse: bool = False) -> dict:
    """Train and infer once through main.py; return the test metrics and times."""
    work.mkdir(parents=True, exist_ok=True)
    plan_path = work / "experimental_plan.yaml"
    plan_text = yaml.safe_dump(make_plan(product_dir, setting), sort_keys=False)
    result_path = work / "result.json"
    if reuse and result_path.is_file() and plan_path.is_file() and plan_path.read_text() == plan_text:
        return json.loads(result_path.read_text())
    result_path.unlink(missing_ok=True)
    plan_path.write_text(plan_text)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--mode", "all", "--config", str(plan_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        return {"error": tail[0] if tail else f"exit {result.returncode}"}
    scores = pd.read_csv(work / "inference_artifacts/output/inference_score.csv").iloc[0].to_dict()
    row = {
        "image_auroc": scores["auroc"],
        "f1": scores["f1"],
        "pixel_auroc": scores.get("pixel_auroc", float("nan")),
        "pixel_aupro": scores.get("pixel_aupro", float("nan")),
        "train_s": seconds(work / "train_artifacts/log/experimental_history.json"),
        "inference_s": seconds(work / "inference_artifacts/log/experimental_history.json"),
        "process_s": time.perf_counter() - started,
    }
    result_path.write_text(json.dumps(row))
    return row


def table(frame: pd.DataFrame) -> str:
    """Markdown tables: per product (mean over data samples) and the average, for each model and backbone."""
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
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "accuracy")
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
    parser.add_argument("--section", default="Accuracy", help="BENCHMARKS.md section the table replaces")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs whose plan is unchanged")
    args = parser.parse_args()
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    train_args = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.train)}
    # resolved: a run from another checkout whose results/ links here writes the same plan paths
    products = dataset.build((ROOT / "results" / "data").resolve(), tuple(args.products), samples=args.samples)
    rows = []
    log = ROOT / "results" / "accuracy-rows.jsonl"
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
            print(json.dumps(row), flush=True)
            with log.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
    frame = pd.DataFrame(rows)
    out = ROOT / "results" / "accuracy.csv"
    frame.to_csv(out, index=False)
    command = "python -m benchmarks.accuracy " + " ".join(sys.argv[1:])
    write_section(ROOT / "BENCHMARKS.md", args.section, f"Command: `{command.strip()}`\n" + table(frame))


if __name__ == "__main__":
    main()
