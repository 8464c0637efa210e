"""The runs of a project as the web page lists them: current artifacts, history, and failed runs.

A run is addressed by its pipeline and id, never by a path from the request: :func:`find_run` looks the id up
among the folders it lists, and :func:`run_file` resolves a file inside that run's folder only.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from vad.heatmaps import UNKNOWN_LABEL, heatmap_name

PIPELINES = ("train", "inference")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")
LOG_TAIL_BYTES = 256 * 1024


@dataclass(frozen=True)
class RunInfo:
    """One run's line on the runs page.

    Attributes:
        pipeline: ``train`` or ``inference``.
        run_id: The run's id.
        folder: Its artifacts folder.
        current: True for the artifacts in ``train_artifacts``/``inference_artifacts``.
        status: ``success`` or ``error``.
        start_time: ISO start time ('' when unknown).
        model: Model name ('' when unknown).
        backbone: Backbone name.
        data: The data folder of the run.
        train_id: For an inference run, the train run of its model ('' when unknown).
        metrics: Headline figures (validation for train runs, the summary for inference runs).
        error: The error line of a failed run.
    """

    pipeline: str
    run_id: str
    folder: Path
    current: bool
    status: str
    start_time: str
    model: str
    backbone: str
    data: str
    train_id: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The run as JSON (no server paths but the data folder as the plan wrote it)."""
        return {
            "pipeline": self.pipeline,
            "id": self.run_id,
            "current": self.current,
            "status": self.status,
            "start_time": self.start_time,
            "model": self.model,
            "backbone": self.backbone,
            "data": self.data,
            "train_id": self.train_id,
            "metrics": self.metrics,
            "error": self.error,
        }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def _plan_args(plan: dict[str, Any], pipeline: str, step: str) -> dict[str, Any]:
    """A step's args from a plan as written (``user_parameters: - train_pipeline: - step: ... args: [{...}]``)."""
    for block in plan.get("user_parameters") or []:
        if not isinstance(block, dict):
            continue
        for entry in block.get(f"{pipeline}_pipeline") or []:
            if isinstance(entry, dict) and entry.get("step") == step:
                args = entry.get("args") or [{}]
                first = args[0] if isinstance(args, list) and args else args
                return first if isinstance(first, dict) else {}
    return {}


def _data_folder(plan: dict[str, Any], pipeline: str) -> str:
    """The plan's data folder of a pipeline (``external_path`` is a list of one-key maps, or one map)."""
    paths = plan.get("external_path") or []
    entries = paths if isinstance(paths, list) else [paths]
    key = f"load_{pipeline}_data_path"
    for entry in entries:
        if isinstance(entry, dict) and entry.get(key):
            return str(entry[key])
    return ""


def _train_metrics(folder: Path) -> dict[str, Any]:
    try:
        with (folder / "output" / "validation_score.csv").open(encoding="utf-8") as handle:
            row = next(csv.DictReader(handle), None)
    except OSError:
        return {}
    if not row:
        return {}
    keep = ("auroc", "f1", "precision", "recall", "pixel_auroc", "n_ok", "n_ng")
    return {key: _number(row[key]) for key in keep if row.get(key) not in (None, "")}


def _inference_metrics(folder: Path) -> dict[str, Any]:
    summary = _read_yaml(folder / "score" / "inference_summary.yaml")
    keep = ("result", "score", "note")
    return {key: summary[key] for key in keep if key in summary}


def _number(text: str) -> float | int | str:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else round(value, 4)


def describe(folder: Path, pipeline: str, current: bool) -> RunInfo:
    """Read a run folder's record, plan and metrics.

    Args:
        folder: The run's artifacts folder.
        pipeline: ``train`` or ``inference``.
        current: Whether it is the pipeline's current artifacts folder.

    Returns:
        The run's line.
    """
    record = _read_json(folder / "log" / "experimental_history.json")
    plan = _read_yaml(folder / "log" / "experimental_plan.yaml")
    train_args = _plan_args(plan, "train", "train")
    config = _read_json(folder / "models" / "train" / "train_config.json").get("model", {})
    params = config.get("params", {}) if isinstance(config, dict) else {}
    status = str(record.get("status") or ("error" if folder.name.endswith("-error") else "success"))
    run_id = str(record.get("id") or folder.name.removesuffix("-error"))
    model = str(config.get("model_name") or (train_args.get("model_name") if pipeline == "train" else "") or "")
    return RunInfo(
        pipeline=pipeline,
        run_id=run_id,
        folder=folder,
        current=current,
        status=status,
        start_time=str(record.get("start_time") or ""),
        model=model,
        backbone=str(params.get("backbone") or ""),
        train_id=str(record.get("train_id") or ""),
        data=_data_folder(plan, pipeline),
        metrics=(_train_metrics(folder) if pipeline == "train" else _inference_metrics(folder))
        if status == "success"
        else {},
        error=str(record.get("error") or "")[:300] if status != "success" else "",
    )


def list_runs(project: Path) -> list[RunInfo]:
    """Every run of a project, newest first: the current artifacts, then ``history/``.

    Args:
        project: The project folder (the plan's folder).

    Returns:
        The runs.
    """
    runs: list[RunInfo] = []
    for pipeline in PIPELINES:
        current = project / f"{pipeline}_artifacts"
        if (current / "log").is_dir():
            runs.append(describe(current, pipeline, True))
        history = project / "history" / pipeline
        if history.is_dir():
            for folder in history.iterdir():
                if folder.is_dir() and RUN_ID.match(folder.name) and (folder / "log").is_dir():
                    runs.append(describe(folder, pipeline, False))
    trained = {run.run_id: run for run in runs if run.pipeline == "train"}
    runs = [_with_model(run, trained.get(run.train_id)) if run.pipeline == "inference" else run for run in runs]
    return sorted(runs, key=lambda run: (run.start_time, run.pipeline), reverse=True)


def _with_model(run: RunInfo, train: RunInfo | None) -> RunInfo:
    """An inference run with the model and backbone of the train run whose model it used."""
    if train is None:
        return run
    return replace(run, model=train.model, backbone=train.backbone)


def _record_id(folder: Path) -> str:
    """A run folder's id: its record's, else its folder name (less ``-error``)."""
    return str(_read_json(folder / "log" / "experimental_history.json").get("id") or folder.name.removesuffix("-error"))


def find_folder(project: Path, pipeline: str, run_id: str) -> tuple[Path, bool] | None:
    """The folder of the run with this pipeline and id, and whether it is the current one; None when none is.

    Reads only the run records (what a picture request needs; :func:`find_run` describes the run too).

    Args:
        project: The project folder.
        pipeline: ``train`` or ``inference``.
        run_id: The id as listed.

    Returns:
        The folder and ``current``, or None.
    """
    if pipeline not in PIPELINES or not RUN_ID.match(run_id):
        return None
    current = project / f"{pipeline}_artifacts"
    candidates = [(current, True)] + [(project / "history" / pipeline / n, False) for n in (run_id, f"{run_id}-error")]
    for folder, is_current in candidates:
        if (folder / "log").is_dir() and _record_id(folder) == run_id:
            return folder, is_current
    return None


def find_run(project: Path, pipeline: str, run_id: str) -> RunInfo | None:
    """The run with this pipeline and id, or None.

    Args:
        project: The project folder.
        pipeline: ``train`` or ``inference``.
        run_id: The id as listed.

    Returns:
        The run, or None when no listed run has that id.
    """
    found = find_folder(project, pipeline, run_id)
    return None if found is None else describe(found[0], pipeline, found[1])


def run_file(folder: Path, relative: str) -> Path | None:
    """A file inside a run's folder, or None when the path leaves it or names no file.

    Args:
        folder: The run's folder.
        relative: A path relative to it.

    Returns:
        The resolved file.
    """
    base = folder.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    return candidate


def output_rows(run: RunInfo) -> list[dict[str, str]]:
    """The run's ``output.csv`` rows, with the heatmap picture of each row where one was saved.

    Args:
        run: The run.

    Returns:
        Rows as dicts of text (``heatmap``: a path relative to the run folder, or '').
    """
    try:
        with (run.folder / "output" / "output.csv").open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    folder = run.folder / "extra_output" / run.pipeline / "images"
    for row in rows:
        name = heatmap_name(row.get("label") or UNKNOWN_LABEL, row.get("pred_label", ""), row.get("image_path", ""))
        row["heatmap"] = f"extra_output/{run.pipeline}/images/{name}" if (folder / name).is_file() else ""
    return rows


def log_text(run: RunInfo) -> str:
    """The run's logs: ``process.log`` (the runner: steps, errors) and ``pipeline.log`` (the steps' lines).

    Args:
        run: The run.

    Returns:
        Each log's last :data:`LOG_TAIL_BYTES` under its name ('' when there are none).
    """
    parts = []
    for name in ("process.log", "pipeline.log"):
        path = run.folder / "log" / name
        try:
            with path.open("rb") as handle:
                size = path.stat().st_size
                handle.seek(max(0, size - LOG_TAIL_BYTES))
                text = handle.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        parts.append(f"==> {name} <==\n{text}")
    return "\n".join(parts)
