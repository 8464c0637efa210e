"""What experiment tracking costs a default run: ``main.py --mode all`` on the sample data, tracking on and off.

The bundled plan on the bundled sample data (``make run``), in a fresh project folder per run, whole
processes start to exit. Runs alternate on and off (``control: tracking``) so that machine drift hits both
alike; the first tracked run of each pair creates its store (the SQLite tables) and a second tracked run in
the same folder adds to it. Reported: medians and the overhead in percent (target: at most 5%).

    .venv/bin/python -m benchmarks.tracking_overhead [--pairs 4]

Rows go to ``results/tracking-overhead-rows.jsonl``; the table to ``BENCHMARKS.md`` ("Tracking overhead").
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.harness.measure import error_tail, main_py, run_timed
from benchmarks.harness.paths import RESULTS, ROOT
from benchmarks.harness.plans import add_control, bundled_plan, save_plan
from benchmarks.harness.report import add_report_options, write_section
from benchmarks.harness.rows import append_rows, utc_stamp

WORK = RESULTS / "tracking-overhead"


def plan_in(folder: Path, tracking: bool) -> Path:
    """The bundled plan in a fresh folder, its data paths absolute, tracking on or off.

    Args:
        folder: The project folder.
        tracking: ``control: tracking``.

    Returns:
        The plan file.
    """
    plan = bundled_plan()
    for entry in plan["external_path"]:
        for key, value in entry.items():
            if value and key.startswith("load_") and key.endswith("data_path"):
                entry[key] = str((ROOT / value).resolve())
    return save_plan(add_control(plan, tracking=tracking), folder)


def seconds(plan: Path) -> tuple[float, float]:
    """One ``main.py --mode all`` process, start to exit; then the seconds until its background loggers finish.

    Waiting for them keeps their CPU out of the next run's measurement.

    Args:
        plan: The plan file.

    Returns:
        The process's seconds and the background loggers' seconds after it.

    Raises:
        RuntimeError: The run failed.
    """
    from alo.plan import load_plan
    from alo.tracking import settings_of, wait_pending

    done, run = run_timed(main_py("--mode", "all", "--config", str(plan)))
    if done.returncode != 0:
        msg = f"main.py --mode all failed: {error_tail(done)}"
        raise RuntimeError(msg)
    ended = time.perf_counter()
    assert wait_pending(settings_of(load_plan(plan)), 300)
    return run, time.perf_counter() - ended


def main() -> None:
    """Alternate the runs, write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    add_report_options(parser, "Tracking overhead")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    off: list[float] = []
    new_store: list[float] = []
    existing_store: list[float] = []
    background: list[float] = []
    for pair in range(args.pairs):
        off.append(seconds(plan_in(WORK / f"off-{pair}", False))[0])
        tracked = plan_in(WORK / f"on-{pair}", True)
        for into in (new_store, existing_store):
            run, after = seconds(tracked)
            into.append(run)
            background.append(after)
        assert (WORK / f"on-{pair}" / "mlruns" / "mlflow.db").is_file()
        assert not (WORK / f"off-{pair}" / "mlruns").exists()
    medians = {
        "off_s": statistics.median(off),
        "new_store_s": statistics.median(new_store),
        "existing_store_s": statistics.median(existing_store),
        "background_s": statistics.median(background),
    }
    row = {
        **medians,
        "runs": {"off": off, "new_store": new_store, "existing_store": existing_store, "background": background},
        "finished": utc_stamp(),
    }
    append_rows(RESULTS / "tracking-overhead-rows.jsonl", [row])
    pct = {key: 100 * (medians[key] / medians["off_s"] - 1) for key in ("new_store_s", "existing_store_s")}
    lines = [
        f"Command: `python -m benchmarks.tracking_overhead --pairs {args.pairs}`",
        "",
        "`main.py --mode all` with the bundled plan on the bundled sample data (what `make run` does), whole "
        f"processes, {args.pairs} alternating runs each, medians. Tracked runs log params, metrics, artifacts and "
        "the pyfunc model to the local SQLite store in `mlruns/`: the command checks the store and hands the "
        "logging to a background process, which each measurement waits for before the next run starts (its "
        "seconds after the command returned are the last column: CPU the run does not wait for).",
        "",
        "| tracking off s | on, new store s | on, existing store s | overhead, new store | overhead, existing store "
        "| background logger after exit s |",
        "|---|---|---|---|---|---|",
        f"| {medians['off_s']:.1f} | {medians['new_store_s']:.1f} | {medians['existing_store_s']:.1f} | "
        f"{pct['new_store_s']:+.1f}% | {pct['existing_store_s']:+.1f}% | {medians['background_s']:.1f} |",
    ]
    write_section(args.benchmarks_file, args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
