"""The edge loop at line rate: the bundled plan as shipped (tracking on, heatmaps on), one client, many requests.

The model and requests of :mod:`benchmarks.serve` (the bundled plan, PatchCore, trained on the engine benchmark's
200 generated gravel images; each request scores one of 300 other images): one client pushes a request and waits
for its answer on ``inference_summary``, ``--requests`` times after 20 unmeasured ones, on a real
``redis-server`` (append-only file synced every second, as ``make redis`` runs it). After the loop stopped (its
pictures and its tracking done), it counts the project's MLflow runs (logged, and jobs still waiting), its
``history/inference`` folders and the heatmap pictures on disk.

With ``--baseline DIR`` (another checkout, say ``git archive <commit> | tar -x -C DIR``), that checkout's loop is
measured too, on its own copy of the trained project: both loops resident side by side, each serving ``--block``
requests in its turn, so that the machine's drift falls on both alike (a loop's background work, its pictures and
its tracking, may spill a little into the other's turn).

    .venv/bin/python -m benchmarks.line_rate [--requests 1000] [--block 50] [--baseline DIR] [--retrain]

Rows go to ``results/line-rate-rows.jsonl``; the table to ``BENCHMARKS.md`` ("Serving: the edge loop at line
rate").
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
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


def sessions(sides: dict[str, tuple[Path, Path]], images: list[Path], count: int, block: int) -> dict[str, dict]:
    """The loops of the checkouts, resident side by side, in turn ``block`` requests each; then what each left.

    Args:
        sides: Name -> (plan of its own project copy, checkout).
        images: The images to score in turn.
        count: Measured requests per loop, after :data:`WARM`.
        block: Requests a loop serves before the next loop's turn.

    Returns:
        Name -> its row.
    """
    loops = {name: Loop(plan, plan.parent / "redis", "everysec", checkout) for name, (plan, checkout) in sides.items()}
    times: dict[str, list[float]] = {name: [] for name in sides}
    loads = [os.getloadavg()[0]]
    try:
        for edge in loops.values():
            for i in range(WARM):
                edge.request(images[i % len(images)])
        for start in range(0, count, block):
            for name, edge in loops.items():
                for i in range(start, min(count, start + block)):
                    times[name].append(edge.request(images[(WARM + i) % len(images)]))
            loads.append(os.getloadavg()[0])
    finally:
        for edge in loops.values():
            edge.close()
    return {
        name: {**summary_ms(times[name]), **_left(plan.parent), "load_min": min(loads), "load_max": max(loads)}
        for name, (plan, _) in sides.items()
    }


def _left(root: Path) -> dict:
    """What a loop left in its project folder after it stopped."""
    history = root / "history" / "inference"
    folders = [p for p in history.iterdir() if p.is_dir()] if history.is_dir() else []
    pictures = [*root.glob("inference_artifacts/extra_output/inference/images/*.png")]
    pictures += [*history.glob("*/extra_output/inference/images/*.png")]
    return {
        "mlflow_runs": _mlflow_runs(root / "mlruns" / "mlflow.db"),
        "pending_jobs": len(list((root / "mlruns" / ".pending").glob("*/job.json"))),
        "history_folders": len(folders),
        "history_mb": sum(f.stat().st_size for f in history.rglob("*") if f.is_file()) / 1e6 if folders else 0.0,
        "pictures_on_disk": len(pictures),
        **_session_figures(root / "mlruns" / "mlflow.db"),
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
    parser.add_argument("--baseline", type=Path, help="another checkout, measured beside this one, in turn")
    parser.add_argument("--baseline-label", default="the baseline checkout", help="how the table names it")
    parser.add_argument("--block", type=int, default=50, help="requests a loop serves before the other's turn")
    parser.add_argument("--retrain", action="store_true", help="train the project again")
    add_report_options(parser, "Serving: the edge loop at line rate")
    args = parser.parse_args()
    plan, images = project(args.retrain)
    sides = {"this": (copy_project(plan, "this"), ROOT)}
    if args.baseline is not None:
        sides = {"baseline": (copy_project(plan, "baseline"), args.baseline.resolve()), **sides}
    rows = sessions(sides, images, args.requests, args.block)
    append_rows(
        RESULTS / "line-rate-rows.jsonl", [{"name": name, **row, "finished": utc_stamp()} for name, row in rows.items()]
    )
    write_section(args.benchmarks_file, args.section, table(rows, args))


def table(rows: dict, args: argparse.Namespace) -> str:
    """The BENCHMARKS.md section."""
    baseline = f" --baseline DIR --baseline-label '{args.baseline_label}'" if args.baseline is not None else ""
    lines = [
        f"Command: `python -m benchmarks.line_rate --requests {args.requests} --block {args.block}{baseline}`",
        "",
        "The bundled plan as shipped (PatchCore, tracking on, heatmaps on), trained on 200 generated gravel images; "
        f"one client sends {args.requests:,} requests after {WARM} unmeasured ones, each scoring one of 300 other "
        "256 px images, and waits for each answer on `inference_summary` (Redis syncing every second). Counted "
        "after the loop stopped: MLflow runs (logged, and jobs still waiting), `history/inference` folders, "
        "heatmap pictures on disk.",
        "",
        "| loop | p50 ms | p95 ms | mean ms | MLflow runs | history folders (MB) | pictures on disk "
        "(written / dropped) |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "baseline": f"{args.baseline_label} (a tracked run per request)",
        "this": "this checkout (one session run)",
    }
    for name, row in rows.items():
        made = (
            f" ({fmt(row.get('pictures_written'), 0)} / {fmt(row.get('pictures_dropped'), 0)})"
            if "pictures_written" in row
            else ""
        )
        lines.append(
            f"| {names[name]} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['mean_ms']:.1f} | "
            f"{row['mlflow_runs'] + row['pending_jobs']} | {row['history_folders']} ({row['history_mb']:.0f}) | "
            f"{row['pictures_on_disk']}{made} |"
        )
    this = rows["this"]
    lines += [
        "",
        f"Load average (1 min) while it ran: {this['load_min']:.2f} to {this['load_max']:.2f} (other work on the "
        "machine shares its 2 cores).",
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
