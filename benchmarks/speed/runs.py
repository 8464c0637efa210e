"""The speed benchmark's measurements, each in its own process; every row logged as it finishes."""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness.measure import main_py, run_timed
from benchmarks.harness.rows import append_rows, utc_stamp
from benchmarks.harness.workers import spawn_worker
from benchmarks.speed.data import build_data, unlabelled
from benchmarks.speed.plans import inference_plan
from benchmarks.speed.settings import LOG, WORK


def spawn(*args: str) -> dict:
    """Run one worker in a fresh process and return its JSON row (with the process's wall seconds).

    Args:
        *args: The worker's kind (``ours``, ``anomalib``, ``bare``, ``work``) and arguments.

    Returns:
        The row, ``process_seconds`` added (or ``error``).
    """
    return spawn_worker("benchmarks.speed", *args, out=WORK / "row.json", wall_key="process_seconds")


def record(rows: dict, name: str, row: dict) -> None:
    """Keep a row and append it to the log.

    Args:
        rows: The run's rows, by name.
        name: The measurement (``patchcore/ours-train``).
        row: Its row (``finished`` is added).
    """
    row["finished"] = utc_stamp(minutes=True)
    rows[name] = row
    append_rows(LOG, [{"name": name, **row}])


def run_patchcore(data: Path, rows: dict) -> None:
    """PatchCore: bare backbone, ours (train, inference, cold single image).

    Args:
        data: A :func:`~benchmarks.speed.data.build_data` folder.
        rows: The run's rows.
    """
    record(rows, "patchcore/bare", spawn("bare", str(data), "patchcore"))
    record(rows, "patchcore/ours-train", spawn("ours", str(data), "patchcore", "train", "1", "test"))
    record(rows, "patchcore/ours-inference", spawn("ours", str(data), "patchcore", "inference", "1", "test"))
    record(rows, "patchcore/ours-unlabelled", spawn("ours", str(data), "patchcore", "inference", "1", "unlabelled"))
    plan = inference_plan(data, "patchcore", 1, "one")
    done, cold = run_timed(main_py("--mode", "inference", "--config", str(plan)))
    summary = plan.parent / "inference_artifacts" / "score" / "inference_summary.yaml"
    ok = done.returncode == 0 and summary.is_file()
    record(rows, "patchcore/ours-cold-one-image", {"seconds": cold, "summary_written": ok})


def run_fastflow(data: Path, rows: dict, epochs: int) -> None:
    """FastFlow: ours (train, inference) and anomalib, same epochs.

    Args:
        data: A :func:`~benchmarks.speed.data.build_data` folder.
        rows: The run's rows.
        epochs: Training epochs (both sides).
    """
    record(rows, "fastflow/ours-train", spawn("ours", str(data), "fastflow", "train", str(epochs), "test"))
    record(rows, "fastflow/ours-inference", spawn("ours", str(data), "fastflow", "inference", str(epochs), "test"))
    record(
        rows,
        "fastflow/ours-unlabelled",
        spawn("ours", str(data), "fastflow", "inference", str(epochs), "unlabelled"),
    )
    record(rows, "fastflow/anomalib", spawn("anomalib", str(data), "fastflow", str(epochs)))
    record(rows, "fastflow/work", spawn("work", str(data), "fastflow"))
    for mode, folder in (("train", "test"), ("inference", "unlabelled")):
        row = spawn("ours", str(data), "fastflow-default", mode, str(epochs), folder)
        record(rows, f"fastflow/ours-default-{mode}", row)


def run_scale(data: Path, rows: dict, counts: list[int], inference_only: bool) -> None:
    """Ours at scale: PatchCore trained on more images, and the 200-image model scoring all of them (no CSV).

    Args:
        data: The 200-image :func:`~benchmarks.speed.data.build_data` folder (its model scores).
        rows: The run's rows.
        counts: Training image counts.
        inference_only: Only the inference runs.
    """
    for count in counts:
        bigger = build_data(count)
        if not inference_only:
            record(rows, f"scale/{count}-train", spawn("ours", str(bigger), "patchcore", "train", "1", "test"))
        # all its OK training images, scored by the 200-image model: only the number of images differs
        unlabelled(bigger / "train" / "good", bigger / "bulk")
        row = spawn("ours", str(data), "patchcore", "inference", "1", str(bigger / "bulk"))
        record(rows, f"scale/{count}-inference", row)


def measure(only: str | None, scale: list[int], epochs: int, train_images: int) -> dict:
    """Every measurement of the parts asked for.

    Args:
        only: One part (``patchcore``, ``fastflow``, ``scale``, ``scale-inference``), or None: all.
        scale: Training image counts of the scale part.
        epochs: FastFlow's epochs (both sides).
        train_images: OK training images of the main dataset.

    Returns:
        The rows, by name.
    """
    rows: dict = {}
    data = build_data(train_images)
    if only in (None, "patchcore"):
        run_patchcore(data, rows)
    if only in (None, "fastflow"):
        run_fastflow(data, rows, epochs)
    if only in (None, "patchcore"):  # last: its greedy coreset takes the better part of an hour
        record(rows, "patchcore/anomalib", spawn("anomalib", str(data), "patchcore", "1"))
    if only == "scale":  # the 200-image run the ratios refer to
        record(rows, "patchcore/ours-train", spawn("ours", str(data), "patchcore", "train", "1", "test"))
    if only == "scale-inference":  # the 100-image production run the inference ratios refer to
        unlabelled_row = spawn("ours", str(data), "patchcore", "inference", "1", "unlabelled")
        record(rows, "patchcore/ours-unlabelled", unlabelled_row)
    if only in (None, "scale", "scale-inference"):
        run_scale(data, rows, scale, inference_only=only == "scale-inference")
    return rows
