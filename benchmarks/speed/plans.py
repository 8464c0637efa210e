"""Our side's plans: the bundled plan set to the benchmark's model settings, one project folder per run."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.harness.plans import bundled_plan, inference_args, save_plan, set_data, train_args
from benchmarks.speed.settings import BATCH, FASTFLOW, PATCHCORE, SIZE, WORK


def write_plan(data: Path, model: str, epochs: int, folder: Path) -> Path:
    """A plan for ``model`` scoring ``folder`` (``fastflow-default``: FastFlow with the product's default backbone).

    Args:
        data: A :func:`~benchmarks.speed.data.build_data` folder (its ``train/`` trains).
        model: ``patchcore``, ``fastflow`` or ``fastflow-default``.
        epochs: Training epochs.
        folder: The images to score.

    Returns:
        The plan file, in its run's own project folder.
    """
    plan = set_data(bundled_plan(), data / "train", folder)
    args = train_args(plan)
    args.update(
        model_name=model.removesuffix("-default"),
        img_size=[SIZE, SIZE],
        batch_size=BATCH,
        max_epochs=epochs,
        save_validation_heatmap=False,
    )
    if model.endswith("-default"):  # the product's own defaults for this model
        args["model_parameters"] = {"early_stopping_patience": epochs}
    elif model == "patchcore":
        args["model_parameters"] = {
            "patchcore_backbone": PATCHCORE["backbone"],
            "patchcore_layers": PATCHCORE["layers"],
            "patchcore_coreset_sampling_ratio": PATCHCORE["ratio"],
        }
    else:
        args["model_parameters"] = {
            "fastflow_backbone": FASTFLOW["backbone"],
            "fastflow_layers": FASTFLOW["layers"],
            "pretrained": False,
            "early_stopping_patience": epochs,
        }
    inference_args(plan)["save_anomaly_maps"] = False
    return save_plan(plan, WORK / "runs" / f"{data.name}-{model}-{folder.name}")


def inference_plan(data: Path, model: str, epochs: int, folder: str) -> Path:
    """A plan scoring ``data / folder`` with the model trained on ``data`` (copied into its run folder).

    Args:
        data: A :func:`~benchmarks.speed.data.build_data` folder.
        model: As in :func:`write_plan`.
        epochs: As in :func:`write_plan`.
        folder: The folder to score, relative to ``data`` (or absolute).

    Returns:
        The plan file.
    """
    plan = write_plan(data, model, epochs, data / folder)
    if folder != "test":  # the "test" run folder is the training run's own
        shutil.rmtree(plan.parent / "train_artifacts", ignore_errors=True)
        shutil.copytree(
            WORK / "runs" / f"{data.name}-{model}-test" / "train_artifacts", plan.parent / "train_artifacts"
        )
    return plan
