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
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from benchmarks.report import write_section

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "results" / "tracking-overhead"


def plan_in(folder: Path, tracking: bool) -> Path:
    """The bundled plan in a fresh folder, its data paths absolute, tracking on or off."""
    plan = yaml.safe_load((ROOT / "experimental_plan.yaml").read_text(encoding="utf-8"))
    for entry in plan["external_path"]:
        for key, value in entry.items():
            if value and key.startswith("load_") and key.endswith("data_path"):
                entry[key] = str((ROOT / value).resolve())
    plan["control"] = [*plan.get("control", []), {"tracking": tracking}]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experimental_plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    return path


def seconds(plan: Path) -> tuple[float, float]:
    """One ``main.py --mode all`` process, start to exit; then the seconds until its background loggers finish.

    Waiting for them keeps their CPU out of the next run's measurement.
    """
    from alo.plan import load_plan
    from alo.tracking import settings_of, wait_pending

    started = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--mode", "all", "--config", str(plan)],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    ended = time.perf_counter()
    assert wait_pending(settings_of(load_plan(plan)), 300)
    return ended - started, time.perf_counter() - ended


def main() -> None:
    """Alternate the runs, write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    off, new_store, existing_store, background = [], [], [], []
    for pair in range(args.pairs):
        off.append(seconds(plan_in(WORK / f"off-{pair}", False))[0])
        tracked = plan_in(WORK / f"on-{pair}", True)
        for into in (new_store, existing_store):
            run, after = seconds(tracked)
            into.append(run)
            background.append(after)
        assert (WORK / f"on-{pair}" / "mlruns" / "mlflow.db").is_file()
        assert not (WORK / f"off-{pair}" / "mlruns").exists()
    row = {
        "off_s": statistics.median(off),
        "new_store_s": statistics.median(new_store),
        "existing_store_s": statistics.median(existing_store),
        "background_s": statistics.median(background),
        "runs": {"off": off, "new_store": new_store, "existing_store": existing_store, "background": background},
        "finished": datetime.now(UTC).isoformat(),
    }
    print(json.dumps(row), flush=True)
    with (ROOT / "results" / "tracking-overhead-rows.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    pct = {key: 100 * (row[key] / row["off_s"] - 1) for key in ("new_store_s", "existing_store_s")}
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
        f"| {row['off_s']:.1f} | {row['new_store_s']:.1f} | {row['existing_store_s']:.1f} | "
        f"{pct['new_store_s']:+.1f}% | {pct['existing_store_s']:+.1f}% | {row['background_s']:.1f} |",
    ]
    write_section(ROOT / "BENCHMARKS.md", "Tracking overhead", "\n".join(lines))


if __name__ == "__main__":
    main()
