"""What a VAD run reports to experiment tracking (:mod:`alo.tracking`), read from its finished artifacts.

Train runs: validation metrics (image AUROC, F1 at the threshold, precision, recall, pixel metrics where
masks exist), the raw threshold, fit seconds, the process's peak RSS, FastFlow's per-epoch train loss and
validation metrics as steps; the threshold sweep (plot and table), the validation reports, up to
:data:`HEATMAPS` heatmaps and the plan as artifacts; the model as an MLflow pyfunc model
(:mod:`apps.mlflow.model`). Inference runs: image counts, the predicted-label distribution, the mean
score, the metrics of labelled rows, the summary and the plan.

The report is built by the run's own process as the run ends (:mod:`alo.tracking`); only :func:`log_model`
runs in the logger.
"""

from __future__ import annotations

import csv
import json
import resource
from collections import Counter
from pathlib import Path
from typing import Any

from alo.tracking import Report
from apps.mlflow.model import log_model as log_pyfunc_model

HEATMAPS = 6
TRAIN_ARTIFACTS = {
    "threshold/threshold_test_result.png": "extra_output/train/threshold_test_result.png",
    "threshold/threshold_test_result.csv": "extra_output/train/threshold_test_result.csv",
    "validation/validation_score.csv": "output/validation_score.csv",
    "validation/validation_confusion_matrix.csv": "output/validation_confusion_matrix.csv",
    "validation/validation_classification_report.json": "output/validation_classification_report.json",
    "plan/experimental_plan.yaml": "log/experimental_plan.yaml",
}
INFERENCE_ARTIFACTS = {
    "summary/inference_summary.yaml": "score/inference_summary.yaml",
    "summary/inference_score.csv": "score/inference_score.csv",
    "plan/experimental_plan.yaml": "log/experimental_plan.yaml",
}


def _numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    found = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value == value and abs(value) != float("inf"):  # MLflow takes no NaN or infinity
            found[f"{prefix}{key}"] = float(value)
    return found


def _first_row(path: Path) -> dict[str, float]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            row = next(csv.DictReader(handle), None) or {}
    except OSError:
        return {}
    values = {}
    for key, text in row.items():
        try:
            values[key] = float(text)
        except (TypeError, ValueError):
            continue
    return _numbers(values)


def peak_rss_mb() -> float:
    """The process's peak resident set so far, in MB (the report is built in the run's own process)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_report(folder: Path) -> Report:
    """A train run's report.

    Args:
        folder: Its artifacts folder.

    Returns:
        The report (a model only when the run saved one).
    """
    report = Report(metrics={"peak_rss_mb": peak_rss_mb()})
    try:
        config = json.loads((folder / "models" / "train" / "train_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    training = config.get("training", {}) if isinstance(config, dict) else {}
    report.metrics.update(_numbers(training.get("validation", {}) or {}, "valid."))
    fit = training.get("fit_metrics", {}) or {}
    report.metrics.update(_numbers(fit, "fit."))
    if isinstance(training.get("fit_seconds"), int | float):
        report.metrics["fit_seconds"] = float(training["fit_seconds"])
    for entry in fit.get("history", []) if isinstance(fit.get("history"), list) else []:
        epoch = int(entry.get("epoch", 0))
        for key, value in _numbers(entry).items():
            if key != "epoch":
                report.steps.setdefault(f"epoch.{key}", []).append((epoch, value))
    try:
        calibration = json.loads((folder / "models" / "train" / "calibration.json").read_text(encoding="utf-8"))
        report.metrics["raw_threshold"] = float(calibration["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    report.artifacts = {name: folder / relative for name, relative in TRAIN_ARTIFACTS.items()}
    pictures = sorted((folder / "extra_output" / "train" / "images").glob("*.png"))[:HEATMAPS]
    report.artifacts.update({f"heatmaps/{picture.name}": picture for picture in pictures})
    model = config.get("model", {}) if isinstance(config, dict) else {}
    report.tags = {"model_name": str(model.get("model_name", ""))}
    if (folder / "models" / "train" / "train_config.json").is_file():
        report.model = folder / "models"
    return report


def inference_report(folder: Path) -> Report:
    """An inference run's report.

    Args:
        folder: Its artifacts folder.

    Returns:
        The report.
    """
    labels: Counter[str] = Counter()
    scores = []
    try:
        with (folder / "output" / "output.csv").open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                labels[row.get("pred_label", "")] += 1
                try:
                    scores.append(float(row["anomaly_score"]))
                except (KeyError, ValueError):
                    continue
    except OSError:
        pass
    metrics = {"n_images": float(sum(labels.values())), "peak_rss_mb": peak_rss_mb()}
    metrics.update({f"pred.{label}": float(count) for label, count in labels.items() if label})
    if scores:
        metrics["mean_anomaly_score"] = sum(scores) / len(scores)
    metrics.update({f"labelled.{k}": v for k, v in _first_row(folder / "score" / "inference_score.csv").items()})
    artifacts = {name: folder / relative for name, relative in INFERENCE_ARTIFACTS.items()}
    return Report(metrics=metrics, artifacts=artifacts)


def report(pipeline: str, folder: Path, record: dict[str, Any]) -> Report:
    """The report of a finished run (the hook :class:`alo.tracking.Tracker` calls).

    Args:
        pipeline: ``train`` or ``inference``.
        folder: The run's artifacts folder.
        record: The run's record.

    Returns:
        The report.
    """
    del record
    return train_report(folder) if pipeline == "train" else inference_report(folder)


def log_model(mlflow: Any, models: Path) -> None:
    """Log a train run's ``models`` folder as the active MLflow run's model (the hook the logger calls).

    Args:
        mlflow: The MLflow module (a run active).
        models: The snapshot of the run's ``models`` folder.
    """
    log_pyfunc_model(mlflow, models)
