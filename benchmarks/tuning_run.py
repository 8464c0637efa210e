"""A tuning run on one product of the accuracy benchmark's data: how much the tuned plan beats the default.

The product's ``train/`` folder (170 OK training images, 20 OK + 10 NG validation) is what the tuner sees;
its held-out ``test/`` folder (50 OK + 50 NG) judges the result. The space is small: PatchCore's backbone x
image size x coreset ratio (``--space small``, section "Tuning: one product"), or the built-in space
(``--space auto``: every registered model, the offline backbones, three sizes, the image scores; section
"Tuning: one product, the built-in space"). Measured: the tune's wall time (``main.py --mode tune``, whole
process), then the default plan and the tuned plan each trained and scored on the test images (image AUROC and F1 at the
trained threshold, from ``inference_score.csv``).

    .venv/bin/python -m benchmarks.tuning_run [--product gravel] [--trials 12] [--resamples 2] [--space small|auto]

Rows go to ``results/tuning-rows.jsonl``; the table to ``BENCHMARKS.md`` ("Tuning: one product").
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd
import yaml

from benchmarks.harness import measure
from benchmarks.harness.paths import RESULTS
from benchmarks.harness.plans import add_control, bundled_plan, save_plan, set_data
from benchmarks.harness.report import add_report_options, write_section
from benchmarks.harness.rows import append_rows, utc_stamp

WORK = RESULTS / "tuning-run"
SPACE = {
    "model_parameters.patchcore_backbone": ["mobilenetv2_100", "tf_efficientnet_lite1"],
    "img_size": [None, 256, 384],
    "model_parameters.patchcore_coreset_sampling_ratio": {"low": 0.02, "high": 0.2, "log": True},
}


def write_plan(folder: Path, data: Path, trials: int, resamples: int, space: str) -> Path:
    """The bundled plan (PatchCore) on the product, with the tuning section (the small space or ``auto``).

    Args:
        folder: The project folder.
        data: The product's folder (``train/``, ``test/``).
        trials: Trials.
        resamples: Fits per trial.
        space: ``small`` or ``auto``.

    Returns:
        The plan file.
    """
    plan = add_control(set_data(bundled_plan(), data / "train", data / "test"), tracking=False)
    plan["tuning"] = {"objective": "auroc", "n_trials": trials, "seed": 0, "resamples": resamples}
    plan["tuning"]["space"] = SPACE if space == "small" else "auto"
    return save_plan(plan, folder)


def main_py(*args: str) -> float:
    """One ``main.py`` process.

    Args:
        *args: Its arguments.

    Returns:
        Its seconds.

    Raises:
        RuntimeError: It failed.
    """
    done, seconds = measure.run_timed(measure.main_py(*args))
    if done.returncode != 0:
        msg = f"main.py {' '.join(args)} failed: {measure.error_tail(done)}"
        raise RuntimeError(msg)
    return seconds


def test_scores(plan: Path, name: str) -> dict:
    """Train a plan (copied into its own folder) and score the test images.

    Args:
        plan: The plan file (its tuning section is dropped).
        name: The copy's folder, in the work folder.

    Returns:
        Test AUROC, F1, and the seconds of ``main.py --mode all``.
    """
    folder = WORK / name
    raw = yaml.safe_load(plan.read_text(encoding="utf-8"))
    raw.pop("tuning", None)
    copy = save_plan(raw, folder)
    seconds = main_py("--mode", "all", "--config", str(copy))
    scores = pd.read_csv(folder / "inference_artifacts" / "score" / "inference_score.csv").iloc[0]
    return {"test_auroc": float(scores["auroc"]), "test_f1": float(scores["f1"]), "train_and_test_s": seconds}


def _model_of(values: str) -> str:
    """The model a trial trained (the plan's own when the space does not choose it)."""
    return json.loads(values).get("model_name") or "patchcore"


def main() -> None:
    """Tune, judge both plans on the test images, write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--product", default="gravel")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--resamples", type=int, default=2)
    parser.add_argument("--space", choices=["small", "auto"], default="small")
    add_report_options(parser)
    args = parser.parse_args()
    data = RESULTS / "data" / args.product
    if not (data / "train").is_dir():
        msg = f"{data} is missing: run python -m benchmarks.accuracy --products {args.product} once to generate it"
        raise SystemExit(msg)
    shutil.rmtree(WORK, ignore_errors=True)
    plan = write_plan(WORK / "project", data, args.trials, args.resamples, args.space)
    tune_s = main_py("--mode", "tune", "--config", str(plan))
    (best,) = sorted((WORK / "project").glob("experimental_plan.tuned-*.yaml"))
    trials = pd.read_csv(next((WORK / "project" / "tuning").glob("*/trials.csv")))
    chosen = trials[trials["chosen"]].iloc[0]
    default = trials[trials["default"]].iloc[0] if trials["default"].any() else None
    row = {
        "product": args.product,
        "space": args.space,
        "pruned": int((trials["state"] == "PRUNED").sum()),
        "models": {str(k): int(v) for k, v in trials["values"].map(_model_of).value_counts().items()},
        "trials": len(trials),
        "complete": int((trials["state"] == "COMPLETE").sum()),
        "tune_s": tune_s,
        "chosen_trial": int(chosen["trial"]),
        "chosen_values": json.loads(chosen["values"]),
        "chosen_valid_auroc": float(chosen["auroc"]),
        "default_valid_auroc": float(default["auroc"]) if default is not None else None,
        "default": test_scores(plan, "default"),
        "tuned": test_scores(best, "tuned"),
        "finished": utc_stamp(),
    }
    append_rows(RESULTS / "tuning-rows.jsonl", [row])
    space = (
        "PatchCore's backbone (mobilenetv2_100, tf_efficientnet_lite1) x img_size (default 320, 256, 384) x coreset "
        "ratio (0.02-0.2, log)"
        if args.space == "small"
        else "`tuning: auto` (every registered model, the offline backbones, img_size 224/256/320 beside the plan's "
        "own, PatchCore's image scores)"
    )
    lines = [
        f"Command: `python -m benchmarks.tuning_run --product {args.product} --trials {args.trials} "
        f"--resamples {args.resamples} --space {args.space}`",
        "",
        f"Product {args.product} of the accuracy benchmark's generated data (drawn defects, not real ones). The tuner "
        "saw only `train/` (170 OK training images, 20 OK + 10 NG validation), with each trial fitted on the plan's "
        f"split and {args.resamples - 1} re-split(s); the 100 held-out `test/` images (50 OK + 50 NG) judge both "
        f"plans afterwards. Space: {space}; objective validation image AUROC; sampler seed 0.",
        "",
        "| plan | trial | values | validation AUROC (mean of resamples) | test AUROC | test F1 |",
        "|---|---|---|---|---|---|",
        f"| default | 0 | the bundled plan | {row['default_valid_auroc']:.4f} | {row['default']['test_auroc']:.4f} | "
        f"{row['default']['test_f1']:.4f} |",
        f"| tuned | {row['chosen_trial']} | {row['chosen_values']} | {row['chosen_valid_auroc']:.4f} | "
        f"{row['tuned']['test_auroc']:.4f} | {row['tuned']['test_f1']:.4f} |",
        "",
        f"The tune ran {row['trials']} trials ({row['complete']} complete, {row['pruned']} pruned; models "
        f"{', '.join(f'{k} {v}' for k, v in row['models'].items())}) in {tune_s / 60:.1f} min (whole process, "
        "2 CPU cores).",
    ]
    section = "Tuning: one product" if args.space == "small" else "Tuning: one product, the built-in space"
    write_section(args.benchmarks_file, section, "\n".join(lines))


if __name__ == "__main__":
    main()
