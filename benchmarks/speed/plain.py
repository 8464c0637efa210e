"""Plain anomalib's worker: a plain script, ``Engine.fit`` then ``Engine.predict``, with our side's settings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.harness import plain_anomalib
from benchmarks.harness.measure import peak_rss_mb
from benchmarks.speed.settings import BATCH, FASTFLOW, PATCHCORE, SIZE, WORK


def anomalib_folder(data: Path, batch: int) -> Any:
    """The ``Folder`` datamodule of anomalib over the dataset's anomalib layout (train OK, test OK and NG).

    Args:
        data: A :func:`~benchmarks.speed.data.build_data` folder.
        batch: Train and eval batch size.

    Returns:
        The datamodule.
    """
    return plain_anomalib.folder_datamodule(
        data / "anomalib",
        batch,
        normal_dir="train_good",
        abnormal_dir="test_bad",
        normal_test_dir="test_good",
        val_split_mode="same_as_test",
    )


def worker_anomalib(data: Path, model: str, epochs: int) -> dict:
    """Plain anomalib: Engine.fit and Engine.predict.

    Args:
        data: A :func:`~benchmarks.speed.data.build_data` folder.
        model: ``patchcore`` or ``fastflow``.
        epochs: FastFlow's epochs (PatchCore: one).

    Returns:
        Fit and predict seconds, mean epoch seconds, peak resident sets, images and image AUROC.
    """
    import torch
    from lightning.pytorch.callbacks import Callback
    from sklearn.metrics import roc_auc_score

    plain_anomalib.quiet()

    class EpochTimer(Callback):
        """Wall time of each training epoch (data loading, forward, backward, optimiser)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.started = 0.0

        def on_train_epoch_start(self, trainer: object, pl_module: object) -> None:
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer: object, pl_module: object) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    timer = EpochTimer()
    if model == "patchcore":
        module = plain_anomalib.patchcore_module(
            PATCHCORE["backbone"], PATCHCORE["layers"], PATCHCORE["ratio"], (SIZE, SIZE)
        )
        max_epochs = 1
    else:
        module = plain_anomalib.fastflow_module(FASTFLOW["backbone"], (SIZE, SIZE))
        max_epochs = epochs
    datamodule = anomalib_folder(data, BATCH)
    engine = plain_anomalib.cpu_engine(
        WORK / "anomalib" / f"{data.name}-{model}", max_epochs=max_epochs, limit_val_batches=0, callbacks=[timer]
    )
    torch.manual_seed(0)
    started = time.perf_counter()
    engine.fit(model=module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - started
    fit_rss = peak_rss_mb()
    datamodule.setup()
    loader = datamodule.test_dataloader()
    started = time.perf_counter()
    batches = engine.predict(model=module, dataloaders=loader, return_predictions=True)
    predict_seconds = time.perf_counter() - started
    scores = torch.cat([batch.pred_score.reshape(-1) for batch in batches]).float().numpy()
    labels = torch.cat([batch.gt_label.reshape(-1) for batch in batches]).int().numpy()
    return {
        "fit_seconds": fit_seconds,
        "fit_peak_rss_mb": fit_rss,
        "epochs": max_epochs,
        "epoch_seconds": sum(timer.seconds) / max(len(timer.seconds), 1),
        "predict_seconds": predict_seconds,
        "images": len(scores),
        "image_auroc": float(roc_auc_score(labels, scores)),
        "peak_rss_mb": peak_rss_mb(),
    }
