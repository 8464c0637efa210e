"""Our side's worker: ``main.py``'s ``main`` run in the worker's process, timed inside it (imports excluded)."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.harness.measure import peak_rss_mb
from benchmarks.speed.plans import inference_plan, write_plan


def worker_ours(data: Path, model: str, mode: str, epochs: int, folder: str) -> dict:
    """Our pipeline through main.py's ``main`` in this process.

    Args:
        data: A :func:`~benchmarks.speed.data.build_data` folder.
        model: ``patchcore``, ``fastflow`` or ``fastflow-default``.
        mode: ``train`` or ``inference``.
        epochs: Training epochs.
        folder: The folder to score (relative to ``data``, or absolute).

    Returns:
        ``seconds``, ``peak_rss_mb``; training: ``fit_seconds`` (and ``epoch_seconds``); inference: ``images``
        (and ``image_auroc`` on labelled images).

    Raises:
        SystemExit: ``main.py`` failed.
    """
    import main as entry
    from assets import inference, train  # noqa: F401  (imports are not part of the timing)

    plan = (
        inference_plan(data, model, epochs, folder)
        if mode == "inference"
        else write_plan(data, model, epochs, data / folder)
    )
    started = time.perf_counter()
    code = entry.main(["--mode", mode, "--config", str(plan)])
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"main.py --mode {mode} failed with exit code {code}")
    row = {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}
    if mode == "train":
        from vad.models.saved import read_saved

        facts = read_saved(plan.parent / "train_artifacts" / "models" / "train").training  # any saved format
        row["fit_seconds"] = facts["fit_seconds"]
        if "epoch_seconds" in facts.get("fit_metrics", {}):
            row["epoch_seconds"] = facts["fit_metrics"]["epoch_seconds"]
    if mode == "inference":
        import pandas as pd

        output = plan.parent / "inference_artifacts" / "output"
        row["images"] = len(pd.read_csv(output / "output.csv"))
        labelled = output.parent / "score" / "inference_score.csv"
        if labelled.is_file():
            row["image_auroc"] = float(pd.read_csv(labelled)["auroc"].iloc[0])
    return row
