"""A finished run as a job: its report built now and snapshotted, with hard links to its files, in a job folder."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alo.tracking.settings import TrackingSettings
from alo.tracking.spool import JOB_FILE, PENDING


@dataclass
class Report:
    """What one run logs besides its params and tags (built by the run's own process).

    Attributes:
        metrics: Final metrics.
        steps: Per-step series, ``{name: [(step, value), ...]}``.
        artifacts: Files to log, ``{path in the run: file}``.
        tags: Extra tags.
        model: A folder the reporter's ``log_model(mlflow, folder)`` logs as the run's model.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    steps: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    model: Path | None = None


def write_job(settings: TrackingSettings, reporter: str | None, record: dict, folder: Path, params: dict) -> Path:
    """Build the run's report now and snapshot it with its files as a job folder (``job.json`` written last).

    Args:
        settings: The tracking settings.
        reporter: The reporter module (see :class:`~alo.tracking.tracker.Tracker`).
        record: The run's record.
        folder: The run's artifacts folder.
        params: The steps' arguments.

    Returns:
        The job folder.
    """
    report = _report(reporter, record, folder)
    job = Path(settings.jobs) / PENDING / f"{record.get('id')}-{record.get('pipeline')}"
    shutil.rmtree(job, ignore_errors=True)  # a half-written snapshot of this same run
    job.mkdir(parents=True)
    try:
        _snapshot(job, settings, reporter, record, params, report)
    except BaseException:
        shutil.rmtree(job, ignore_errors=True)  # no half-written job is left behind
        raise
    return job


def _report(reporter: str | None, record: dict, folder: Path) -> Report:
    if reporter is None:
        return Report()
    module = importlib.import_module(reporter)
    return module.report(str(record.get("pipeline")), folder, record)


def _snapshot(
    job: Path, settings: TrackingSettings, reporter: str | None, record: dict, params: dict, report: Report
) -> None:
    """Link the report's files into the job folder and write its ``job.json`` (last, by a rename)."""
    artifacts = {}
    for index, (name, path) in enumerate(sorted(report.artifacts.items())):
        if path.is_file():
            relative = f"files/{index}/{Path(name).name}"
            _link_tree(path, job / relative)
            artifacts[name] = relative
    model = None
    if report.model is not None and report.model.is_dir():
        model = f"model/{report.model.name}"
        _link_tree(report.model, job / model)
    payload = {
        "settings": asdict(settings),
        "reporter": reporter,
        "record": record,
        "params": params,
        "report": {
            "metrics": report.metrics,
            "steps": report.steps,
            "tags": report.tags,
            "artifacts": artifacts,
            "model": model,
        },
    }
    written = job / f"{JOB_FILE}.part"
    written.write_text(json.dumps(payload, default=str), encoding="utf-8")
    written.rename(job / JOB_FILE)


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (copy across file systems) a file or a folder's files to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link)
    else:
        link(str(source), str(target))
