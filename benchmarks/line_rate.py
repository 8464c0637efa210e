"""The edge loop at line rate: the bundled plan as shipped (tracking on, heatmaps on), one client, many requests.

The model and requests of :mod:`benchmarks.serve` (the bundled plan, PatchCore, trained on the engine benchmark's
200 generated gravel images; each request scores one of 300 other images): one client pushes a request and waits
for its answer on ``inference_summary``, ``--requests`` times after 20 unmeasured ones, on a real
``redis-server`` (append-only file synced every second, as ``make redis`` runs it). After the loop stopped (its
pictures and its tracking done), it counts the project's MLflow runs (logged, and jobs still waiting), its
``history/inference`` folders and the heatmap pictures on disk.

With ``--baseline DIR`` (another checkout, say ``git archive <commit> | tar -x -C DIR``), the same is measured
for that checkout's loop first, on its own copy of the trained project, and the table compares the two. The two
loops run one after the other, not in turn: a loop's background work (pictures, tracking) would fall on the
other's requests.

    .venv/bin/python -m benchmarks.line_rate [--requests 1000] [--baseline DIR] [--retrain]

Rows go to ``results/line-rate-rows.jsonl``; the table to ``BENCHMARKS.md`` ("Serving: the edge loop at line
rate").
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import time
from pathlib import Path

from benchmarks.harness.measure import summary_ms
from benchmarks.harness.paths import RESULTS, ROOT
from benchmarks.harness.report import add_report_options, fmt, write_section
from benchmarks.harness.rows import append_rows, utc_stamp
from benchmarks.serve import Loop, trained_project

WORK = RESULTS / "line-rate"
WARM = 20


def project(retrain: bool) -> tuple[Path, list[Path]]:
    """The trained bundled-plan project (trained once; ``retrain``: again) and the images to score in turn."""
    plan = WORK / "project" / "experimental_plan.yaml"
    if retrain or not (plan.parent / "train_artifacts" / "models").is_dir():
        _, plan, images, _ = trained_project(WORK)
        return plan, images
    from benchmarks.engine_speed import build_data

    return plan, sorted((build_data("default") / "score").glob("*.jpg"))


def copy_project(plan: Path, name: str) -> Path:
    """A fresh copy of the trained project (plan and model, nothing a loop wrote) for one checkout's loop."""
    folder = WORK / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy2(plan, folder / plan.name)
    shutil.copytree(plan.parent / "train_artifacts", folder / "train_artifacts")
    return folder / plan.name


def session(plan: Path, images: list[Path], count: int, checkout: Path) -> dict:
    """One loop of a checkout: latencies of ``count`` requests after :data:`WARM`, then what it left on disk."""
    load_before = os.getloadavg()[0]
    times: list[float] = []
    with_redis = plan.parent / "redis"
    edge = Loop(plan, with_redis, "everysec", checkout)
    try:
        for i in range(count + WARM):
            elapsed = edge.request(images[i % len(images)])
            if i >= WARM:
                times.append(elapsed)
    finally:
        started = time.perf_counter()
        edge.close()
        stop_s = time.perf_counter() - started
    root = plan.parent
    history = root / "history" / "inference"
    folders = [p for p in history.iterdir() if p.is_dir()] if history.is_dir() else []
    pictures = [*root.glob("inference_artifacts/extra_output/inference/images/*.png")]
    pictures += [*history.glob("*/extra_output/inference/images/*.png")]
    return {
        **summary_ms(times),
        "requests": count + WARM,
        "mlflow_runs": _mlflow_runs(root / "mlruns" / "mlflow.db"),
        "pending_jobs": len(list((root / "mlruns" / ".pending").glob("*/job.json"))),
        "history_folders": len(folders),
        "history_mb": sum(f.stat().st_size for f in history.rglob("*") if f.is_file()) / 1e6 if folders else 0.0,
        "pictures_on_disk": len(pictures),
        **_session_figures(root / "mlruns" / "mlflow.db"),
        "stop_s": stop_s,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def _mlflow_runs(database: Path) -> int:
    if not database.is_file():
        return 0
    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT count(*) FROM runs").fetchone()[0])


def _session_figures(database: Path) -> dict:
    """The session run's last picture counts (a checkout without a session run has none)."""
    if not database.is_file():
        return {}
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT key, value FROM latest_metrics WHERE key IN ('pictures_written', 'pictures_dropped')"
        ).fetchall()
    return {str(key): float(value) for key, value in rows}


def main() -> None:
    """Run the benchmark and write its section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--baseline", type=Path, help="another checkout, measured first for comparison")
    parser.add_argument("--retrain", action="store_true", help="train the project again")
    add_report_options(parser, "Serving: the edge loop at line rate")
    args = parser.parse_args()
    plan, images = project(args.retrain)
    rows: dict[str, dict] = {}
    if args.baseline is not None:
        rows["baseline"] = session(copy_project(plan, "baseline"), images, args.requests, args.baseline.resolve())
    rows["this"] = session(copy_project(plan, "this"), images, args.requests, ROOT)
    append_rows(
        RESULTS / "line-rate-rows.jsonl", [{"name": name, **row, "finished": utc_stamp()} for name, row in rows.items()]
    )
    write_section(args.benchmarks_file, args.section, table(rows, args))


def table(rows: dict, args: argparse.Namespace) -> str:
    """The BENCHMARKS.md section."""
    baseline = " --baseline DIR" if args.baseline is not None else ""
    lines = [
        f"Command: `python -m benchmarks.line_rate --requests {args.requests}{baseline}`",
        "",
        "The bundled plan as shipped (PatchCore, tracking on, heatmaps on), trained on 200 generated gravel images; "
        f"one client sends {args.requests:,} requests after {WARM} unmeasured ones, each scoring one of 300 other "
        "256 px images, and waits for each answer on `inference_summary` (Redis syncing every second). Counted "
        "after the loop stopped: MLflow runs (logged, and jobs still waiting), `history/inference` folders, "
        "heatmap pictures on disk.",
        "",
        "| loop | p50 ms | p95 ms | mean ms | MLflow runs | history folders (MB) | pictures on disk "
        "(written / dropped) | load average before / after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"baseline": "baseline checkout (a tracked run per request)", "this": "this checkout (one session run)"}
    for name, row in rows.items():
        made = (
            f" ({fmt(row.get('pictures_written'), 0)} / {fmt(row.get('pictures_dropped'), 0)})"
            if "pictures_written" in row
            else ""
        )
        lines.append(
            f"| {names[name]} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['mean_ms']:.1f} | "
            f"{row['mlflow_runs'] + row['pending_jobs']} | {row['history_folders']} ({row['history_mb']:.0f}) | "
            f"{row['pictures_on_disk']}{made} | {row['load_before']:.2f} / {row['load_after']:.2f} |"
        )
    this = rows["this"]
    lines += [
        "",
        f"Target: p50 at most 60 ms and one MLflow run for the session: p50 {this['p50_ms']:.1f} ms "
        f"({'met' if this['p50_ms'] <= 60 else 'not met'}), "
        f"{this['mlflow_runs'] + this['pending_jobs']} run(s) "
        f"({'met' if this['mlflow_runs'] + this['pending_jobs'] == 1 else 'not met'}).",
    ]
    if "baseline" in rows:
        ratio = this["p50_ms"] / rows["baseline"]["p50_ms"]
        lines.append(f"p50 against the baseline checkout's: {ratio:.2f}x.")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
