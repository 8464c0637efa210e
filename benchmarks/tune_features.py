"""What the tuner's shared feature memo saves per fit, on a real-defect split (``tuning.feature_cache_mb``).

The fits are the tuner's own (:func:`vad.tuning.study._trial_plan` and ``_fit``: exports and heatmaps
off), of PatchCore on tf_efficientnet_lite0 at 320 px, on the first resample the study writes of the split's
``train/`` folder (200 OK train, 20 OK + 20 NG validation). In one memo block: the first fit (every feature
new), a fit that differs only in the image score (features and coreset from the memo), a fit with another coreset
ratio (features from the memo, a new coreset); then the first fit again without the memo. The cached and the
uncached first fit must agree exactly (validation AUROC and the calibration). A trial is ``--resamples`` fits, so
30 minutes buy ``1800 / (resamples x seconds per fit)`` trials.

    .venv/bin/python -m benchmarks.tune_features [--split results/real_defects/data/split0] [--resamples 3]

Rows go to ``results/tune-features/rows.jsonl`` (BENCHMARKS.md, "Tuning: shared features").
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from alo.plan import load_plan
from benchmarks.harness.paths import RESULTS
from benchmarks.harness.plans import add_control, bundled_plan, save_plan, set_data, train_args
from benchmarks.harness.rows import append_rows, utc_stamp
from vad.models import feature_cache
from vad.tuning import study
from vad.tuning.resample import labelled_data, write_resamples

WORK = RESULTS / "tune-features"
FITS = (  # name, memo on, image score, coreset ratio (the memo's fits first, in one block)
    ("cached: first fit", True, "map_max", 0.1),
    ("cached: other image score", True, "reweighted", 0.1),
    ("cached: other coreset ratio", True, "map_max", 0.05),
    ("uncached", False, "map_max", 0.1),
)


def write_plan(folder: Path, split: Path) -> Path:
    """The bundled plan (PatchCore, tf_efficientnet_lite0, 320 px) on the split's train folder.

    Args:
        folder: The project folder.
        split: A real-defect split folder (its ``train/``).

    Returns:
        The plan file (its train pipeline only).
    """
    plan = add_control(set_data(bundled_plan(), split / "train"), tracking=False)
    plan["user_parameters"] = [block for block in plan["user_parameters"] if "train_pipeline" in block]
    args = train_args(plan)
    args.update({"model_name": "patchcore", "img_size": 320})
    backbone = {"patchcore_backbone": "tf_efficientnet_lite0"}
    args["model_parameters"] = {**(args.get("model_parameters") or {}), **backbone}
    return save_plan(plan, folder)


def fit(plan: Any, data: Path, folder: Path, image_score: str, ratio: float) -> dict[str, Any]:
    """One fit as the tuner runs it; its seconds, validation AUROC and calibration.

    Args:
        plan: The loaded plan.
        data: The resample's data folder.
        folder: The fit's project folder.
        image_score: PatchCore's image score.
        ratio: Its coreset sampling ratio.

    Returns:
        ``seconds``, ``auroc``, ``calibration``.
    """
    changes = {"model_parameters": {"patchcore_image_score": image_score, "patchcore_coreset_sampling_ratio": ratio}}
    started = time.perf_counter()
    auroc, _ = study._fit(study._trial_plan(plan, folder, data, changes), "auroc")
    seconds = time.perf_counter() - started
    calibration = folder / "train_artifacts" / "models" / "train" / "calibration.json"
    return {"seconds": round(seconds, 1), "auroc": auroc, "calibration": json.loads(calibration.read_text())}


def main(argv: list[str] | None = None) -> None:
    """Run the four fits and print one row each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=RESULTS / "real_defects" / "data" / "split0")
    parser.add_argument("--resamples", type=int, default=3, help="fits per trial, for the projection")
    args = parser.parse_args(argv)
    if WORK.exists():
        shutil.rmtree(WORK / "fits", ignore_errors=True)
    plan = load_plan(write_plan(WORK, args.split))
    (data, *_) = write_resamples(labelled_data(plan), WORK / "data", 1, 0)
    rows = []
    with feature_cache.enabled() as cache:
        for number, (name, _, image_score, ratio) in enumerate(FITS[:-1]):
            rows.append({"fit": name, **fit(plan, data, WORK / "fits" / str(number), image_score, ratio)})
            rows[-1]["memo"] = f"{cache.stats.line()}; coreset and centroids: {cache.results.stats.line()}"
            print(json.dumps(rows[-1]), flush=True)
    name, _, image_score, ratio = FITS[-1]
    rows.append({"fit": name, **fit(plan, data, WORK / "fits" / "uncached", image_score, ratio)})
    print(json.dumps(rows[-1]), flush=True)
    same = (rows[0]["auroc"], rows[0]["calibration"]) == (rows[-1]["auroc"], rows[-1]["calibration"])
    stamp = utc_stamp(minutes=True).removesuffix(" UTC")
    logged = [
        {**row, "utc": stamp, "trials_per_30_min": round(1800 / (args.resamples * row["seconds"]), 1)} for row in rows
    ]
    append_rows(WORK / "rows.jsonl", logged, echo=False)
    print(f"cached and uncached first fit identical: {same}")


if __name__ == "__main__":
    main()
