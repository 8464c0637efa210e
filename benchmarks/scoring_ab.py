r"""Scoring rate of two checkouts on one trained model: ``Detector`` (torch runtime), one process per run, alternating.

Each run loads the model in a fresh process whose working folder is the checkout (so its ``vad`` is imported),
scores the images after a 16-image warm-up, without and with maps, and prints its images/s. Runs alternate
between the checkouts so that the machine's drift falls on both alike.

    python -m benchmarks.scoring_ab --checkouts /tmp/base . \\
        --models results/engine-speed/runs/default/main/train_artifacts/models \\
        --images results/engine-speed/data/gravel-200/score
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.harness.measure import error_tail, run_timed
from benchmarks.harness.report import fmt

BATCH = 8
WORKER = f"""
import json, sys, time
from pathlib import Path
from vad.detector import Detector
from vad.images import read_image
from vad.runtime import use_all_cores
use_all_cores()
detector = Detector.load(Path(sys.argv[1]), runtime="torch")
pictures = [read_image(str(p)) for p in sorted(Path(sys.argv[2]).glob("*.jpg"))[: int(sys.argv[3])]]
def rate(maps):
    list(detector.iter_predict(pictures[:16], {BATCH}, maps=maps))
    started = time.perf_counter()
    list(detector.iter_predict(pictures, {BATCH}, maps=maps))
    return len(pictures) / (time.perf_counter() - started)
print(json.dumps({{"no_maps": rate(False), "maps": rate(True)}}))
"""


def run_once(checkout: Path, models: Path, images: Path, count: int) -> dict[str, float]:
    """One scoring run in a fresh process of a checkout.

    Args:
        checkout: The checkout (its ``vad`` is imported).
        models: The trained ``models`` folder.
        images: A folder of ``*.jpg`` images.
        count: Images scored.

    Returns:
        ``no_maps`` and ``maps`` images/s.

    Raises:
        RuntimeError: The run failed (its error tail).
    """
    command = [sys.executable, "-c", WORKER, str(models.resolve()), str(images.resolve()), str(count)]
    done, _ = run_timed(command, cwd=checkout.resolve())
    if done.returncode != 0:
        msg = f"{checkout}: {error_tail(done)}"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Alternate the checkouts' runs and print a markdown table of their rates and medians.

    Args:
        argv: The command line (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkouts", type=Path, nargs=2, required=True, help="the two checkouts compared")
    parser.add_argument("--models", type=Path, required=True, help="a trained models folder")
    parser.add_argument("--images", type=Path, required=True, help="a folder of *.jpg images")
    parser.add_argument("--count", type=int, default=300, help="images scored per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per checkout")
    args = parser.parse_args(argv)
    rates: list[list[dict[str, float]]] = [[] for _ in args.checkouts]  # by position: a checkout may come twice
    for _ in range(args.repeats):
        for runs, checkout in zip(rates, args.checkouts, strict=True):
            runs.append(run_once(checkout, args.models, args.images, args.count))
    print(f"| Detector.predict, torch runtime, images/s | {' | '.join(str(c) for c in args.checkouts)} |")
    print("|---|---|---|")
    for key, label in (("no_maps", "no maps"), ("maps", "with maps")):
        cells = []
        for runs in rates:
            values = [run[key] for run in runs]
            cells.append(f"{', '.join(fmt(v) for v in values)} ({fmt(statistics.median(values))})")
        print(f"| {label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
