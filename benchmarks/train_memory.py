"""Peak memory of PatchCore training as the data grows: 200 against 2,000 OK images, the bundled plan's defaults.

Each count trains in its own process, ``main.py --mode train`` with the bundled plan as it ships (PatchCore on
EfficientNet-Lite0 at the model's default 320 px, coreset 0.1, the default exports to OpenVINO and ONNX with
their parity gates, tracking on) but for its data: generated gravel images (256 px JPEGs,
``solution/make_sample_data.py``), OK only, listed in a CSV without a split column (``train_validate_column: ''``:
readiness holds 10% of them out for validation). Reported for each count: the peak resident set of that
process (``ru_maxrss`` from ``wait4``), its wall seconds and the memory bank's size; and the ratio of the largest
count's peak to the smallest's, which must stay at most ``--max-ratio`` (default 1.5, issue 28): the run exits 1
above it. ``--baseline CHECKOUT`` trains the same counts with another checkout's ``main.py`` too (the code before
a change; its ``.venv`` when it has one, else this interpreter).

    .venv/bin/python -m benchmarks.train_memory [--counts 200 2000] [--max-ratio 1.5] [--baseline CHECKOUT]
        [--section ["Memory: PatchCore training, 200 vs 2,000 images"]] [--benchmarks-file FILE]

Rows go to ``results/train-memory-rows.jsonl``; with ``--section`` the table also replaces (or appends) that
section of ``BENCHMARKS.md``. ``tests/test_train_memory.py`` (the slow tier: ``make test-all``) runs
:func:`measure` and asserts the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness.data import generate, stamped
from benchmarks.harness.measure import main_py
from benchmarks.harness.paths import RESULTS, ROOT
from benchmarks.harness.plans import bundled_plan, save_plan, set_data, step_args
from benchmarks.harness.report import add_report_options, command_line, fmt, write_section
from benchmarks.harness.rows import append_rows, utc_stamp

WORK = RESULTS / "train-memory"
ROWS_LOG = RESULTS / "train-memory-rows.jsonl"
COUNTS = (200, 2000)
MAX_RATIO = 1.5  # issue 28: the 2,000-image run's peak at most 1.5 times the 200-image run's
SECTION = "Memory: PatchCore training, 200 vs 2,000 images"
SEED = 1000
COLUMNS = ["label", "image_path"]  # the CSV the runs read: no split column


def build_data(count: int, folder: Path = WORK / "data") -> Path:
    """Generate (or reuse) ``count`` OK gravel images and a train.csv of ``label`` and ``image_path`` only.

    Args:
        count: OK images.
        folder: Where the datasets go (one folder per count).

    Returns:
        The ``train/`` folder (the plan's ``load_train_data_path``).
    """

    def build(target: Path) -> None:
        import pandas as pd

        counts = {"n_train": count, "n_valid": 0, "n_bad": 0, "n_inf_ok": 0, "n_inf_ng": 0}
        generate(target, SEED, counts, test="inference")
        csv = target / "train" / "train.csv"
        pd.read_csv(csv, dtype=str, keep_default_na=False)[COLUMNS].to_csv(csv, index=False)

    stamp = {"product": "gravel", "seed": SEED, "n_train": count, "columns": COLUMNS}
    return stamped(folder / f"gravel-{count}", stamp, build) / "train"


def plan_for(data: Path) -> dict:
    """The bundled plan on a data folder without a split column (every other argument as it ships).

    Args:
        data: A :func:`build_data` folder.

    Returns:
        The plan.
    """
    plan = set_data(bundled_plan(), data)
    step_args(plan, "train", "readiness")["train_validate_column"] = ""  # no split column: 10% held out
    return plan


def _python(checkout: Path) -> str:
    own = checkout / ".venv" / "bin" / "python"
    return str(own) if checkout != ROOT and own.is_file() else sys.executable


def train_peak(data: Path, project: Path, checkout: Path = ROOT) -> dict:
    """Train on a data folder in a fresh ``main.py`` process and measure it.

    Args:
        data: A :func:`build_data` folder.
        project: The run's project folder (emptied first; the plan and ``train.log`` go there).
        checkout: Whose ``main.py`` runs (default: this repository).

    Returns:
        ``peak_rss_mb`` (the process's ``ru_maxrss``, MB), ``seconds`` (start to exit), ``bank_rows`` and
        ``bank_mb`` (the saved memory bank), ``fit_seconds``; ``error`` (the log's last lines) when it failed.
    """
    shutil.rmtree(project, ignore_errors=True)
    plan = save_plan(plan_for(data), project)
    log = project / "train.log"
    command = main_py("--mode", "train", "--config", str(plan), python=_python(checkout), checkout=checkout)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.Popen(command, cwd=project, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this process's own rusage: its peak resident set
    process.returncode = os.waitstatus_to_exitcode(status)
    row: dict = {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - started, 1)}
    if process.returncode != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return {**row, "error": "\n".join(lines[-5:]) or f"exit {process.returncode}"}
    models = project / "train_artifacts" / "models" / "train"
    from safetensors import safe_open

    with safe_open(str(models / "model.safetensors"), framework="np") as weights:
        rows, dims = weights.get_slice("memory_bank").get_shape()
    config = json.loads((models / "train_config.json").read_text(encoding="utf-8"))
    fit_seconds = (config.get("training") or config.get("scoring") or {}).get("fit_seconds")  # either format
    return {**row, "bank_rows": rows, "bank_mb": round(rows * dims * 4 / 2**20, 1), "fit_seconds": fit_seconds}


def measure(counts: Sequence[int] = COUNTS, work: Path = WORK, checkout: Path = ROOT, code: str = "this") -> dict:
    """Train each count in its own process (data generated or reused under ``work``) and compare the peaks.

    Args:
        counts: OK image counts, the smallest first (the ratio is the last's peak over the first's).
        work: The folder of the data and the runs.
        checkout: Whose ``main.py`` runs.
        code: The rows' label for that checkout (also names its run folders: letters, digits, ``-``, ``_``).

    Returns:
        ``rows`` (one per count: ``images``, ``code`` and :func:`train_peak`'s figures) and ``ratio`` (NaN when
        a run failed).
    """
    rows = []
    for count in counts:
        data = build_data(count, work / "data")
        row: dict[str, Any] = {"images": count, "code": code, "checkout": str(checkout)}
        row.update(train_peak(data, work / "runs" / f"{code}-{count}", checkout))
        row["finished"] = utc_stamp(minutes=True)
        rows.append(row)
    failed = any("error" in row for row in rows)
    ratio = float("nan") if failed else rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    return {"rows": rows, "ratio": ratio}


def table(results: Sequence[dict]) -> str:
    """The markdown table of one or more :func:`measure` results (each against its own smallest count).

    Args:
        results: The results.

    Returns:
        The table, with any run's error below it.
    """
    lines = [
        "| code | OK images (validation) | memory bank rows (MB) | peak RSS MB | vs the smallest count | process s |",
        "|---|---|---|---|---|---|",
    ]
    errors = []
    for result in results:
        base = result["rows"][0].get("peak_rss_mb")
        for row in result["rows"]:
            held_out = round(row["images"] * 0.1)
            bank = f"{row['bank_rows']:,} ({fmt(row['bank_mb'])})" if "bank_rows" in row else "n/a"
            versus = f"{row['peak_rss_mb'] / base:.2f}x" if base and "error" not in row else "n/a"
            lines.append(
                f"| {row['code']} | {row['images']:,} ({held_out}) | {bank} | {fmt(row['peak_rss_mb'], 0)} | "
                f"{versus} | {fmt(row['seconds'], 0)} |"
            )
            if "error" in row:
                errors.append(f"{row['code']} {row['images']}: {row['error']}")
    return "\n".join(lines + ([f"\nErrors: {'; '.join(errors)}"] if errors else []))


def main() -> None:
    """Run the counts (and the baseline's), print the table, write the section when asked; exit 1 above the limit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", nargs="+", type=int, default=list(COUNTS), help="OK image counts, smallest first")
    parser.add_argument("--max-ratio", type=float, default=MAX_RATIO, help="largest peak / smallest peak allowed")
    parser.add_argument("--baseline", type=Path, help="another checkout to train the counts with (rows 'baseline')")
    parser.add_argument(
        "--section", nargs="?", const=SECTION, help=f"write the table to this BENCHMARKS.md section ({SECTION!r})"
    )
    add_report_options(parser)
    args = parser.parse_args()
    counts = sorted(args.counts)
    results = []
    if args.baseline is not None:
        results.append(measure(counts, WORK, args.baseline.resolve(), code="baseline"))
        append_rows(ROWS_LOG, results[-1]["rows"])
    results.append(measure(counts, WORK))
    append_rows(ROWS_LOG, results[-1]["rows"])
    ratio = results[-1]["ratio"]
    text = table(results)
    print(text)
    print(f"peak RSS ratio {counts[-1]} / {counts[0]} images: {ratio:.2f} (limit {args.max_ratio})")
    if args.section:
        body = (
            f"Command: `{command_line('benchmarks.train_memory')}`\n\n"
            "`main.py --mode train` in its own process per count (peak RSS: its `ru_maxrss`), the bundled plan's\n"
            "defaults, generated OK gravel images listed without a split column (10% held out for validation).\n"
            f"Ratio of this code's peaks: **{ratio:.2f}** (limit {args.max_ratio}).\n\n"
            f"{text}\n"
        )
        write_section(args.benchmarks_file, args.section, body)
    if not ratio <= args.max_ratio:  # NaN (a failed run) fails too
        sys.exit(1)


if __name__ == "__main__":
    main()
