"""The speed benchmark's command: run the parts asked for (or one worker) and write their sections."""

from __future__ import annotations

import argparse
from pathlib import Path

import benchmarks.speed
from benchmarks.harness.report import add_report_options
from benchmarks.harness.workers import add_worker_options, answer


def run_worker(kind: str, data: str, model: str, *rest: str) -> dict:
    """One worker's row, in this process (see :func:`benchmarks.speed.runs.spawn`).

    Args:
        kind: ``ours``, ``work``, ``anomalib`` or ``bare``.
        data: The dataset folder.
        model: The model.
        *rest: The worker's other arguments.

    Returns:
        Its row.
    """
    if kind == "ours":
        from benchmarks.speed.ours import worker_ours

        return worker_ours(Path(data), model, rest[0], int(rest[1]), rest[2])
    if kind == "anomalib":
        from benchmarks.speed.plain import worker_anomalib

        return worker_anomalib(Path(data), model, int(rest[0]))
    from benchmarks.speed.backbone import worker_bare, worker_work

    return worker_work(Path(data), model) if kind == "work" else worker_bare(Path(data), model)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or one worker) and write the report.

    Args:
        argv: The arguments (default: the command line's).
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed", description=(benchmarks.speed.__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--only",
        choices=["patchcore", "fastflow", "scale", "scale-inference"],
        help="one part of the benchmark",
    )
    parser.add_argument("--scale", nargs="*", type=int, default=[], help="also train ours on this many images")
    parser.add_argument("--epochs", type=int, default=3, help="FastFlow epochs (both sides)")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument(
        "--from-log",
        action="store_true",
        help="only rewrite the tables from the latest rows in results/speed-rows.jsonl",
    )
    add_report_options(parser, "Speed", "BENCHMARKS.md sections' title prefix (': PatchCore', ... added)")
    add_worker_options(parser)
    args = parser.parse_args(argv)
    if args.worker:
        answer(args.out, run_worker(*args.worker))
        return
    from benchmarks.speed.runs import measure
    from benchmarks.speed.tables import logged_rows, write_tables

    if args.from_log:
        write_tables(logged_rows(), args.epochs, args.benchmarks_file, args.section, from_log=True)
        return
    rows = measure(args.only, args.scale, args.epochs, args.train_images)
    if args.only == "scale-inference":  # the training rows of the scale table come from earlier runs
        write_tables(logged_rows(), args.epochs, args.benchmarks_file, args.section, from_log=True, parts=("scale",))
        return
    write_tables(rows, args.epochs, args.benchmarks_file, args.section)
