"""The bundled plan as a dict, edited and saved the way every benchmark derives its plans from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from benchmarks.harness.paths import ROOT

PLAN_FILE = "experimental_plan.yaml"


def bundled_plan() -> dict:
    """The bundled ``experimental_plan.yaml`` as a dict (a fresh copy each call).

    Returns:
        The plan.
    """
    return yaml.safe_load((ROOT / PLAN_FILE).read_text(encoding="utf-8"))


def step_args(plan: dict, pipeline: str, step: str) -> dict:
    """The (mutable) args map of one step of a plan dict; an empty one is created for a step without args.

    Args:
        plan: A plan dict.
        pipeline: ``train`` or ``inference``.
        step: The step name.

    Returns:
        The step's first args map.

    Raises:
        KeyError: The pipeline has no such step.
    """
    for entry in plan["user_parameters"]:
        for item in entry.get(f"{pipeline}_pipeline", []):
            if item["step"] == step:
                if not item.get("args"):
                    item["args"] = [{}]
                return item["args"][0]
    msg = f"the {pipeline} pipeline has no step {step!r}"
    raise KeyError(msg)


def train_args(plan: dict) -> dict:
    """The train step's args map (see :func:`step_args`).

    Args:
        plan: A plan dict.

    Returns:
        The map.
    """
    return step_args(plan, "train", "train")


def inference_args(plan: dict) -> dict:
    """The inference step's args map (see :func:`step_args`).

    Args:
        plan: A plan dict.

    Returns:
        The map.
    """
    return step_args(plan, "inference", "inference")


def set_data(plan: dict, train: Path, inference: Path | None = None, **paths: Any) -> dict:
    """Point a plan's ``external_path`` at data folders (its other entries dropped).

    Args:
        plan: A plan dict.
        train: The training data folder.
        inference: The folder to score (None: no inference entry).
        **paths: More ``external_path`` entries, in order (``save_train_artifacts_path=...``).

    Returns:
        The plan.
    """
    entries: list[dict[str, Any]] = [{"load_train_data_path": str(train)}]
    if inference is not None:
        entries.append({"load_inference_data_path": str(inference)})
    entries += [{key: value} for key, value in paths.items()]
    plan["external_path"] = entries
    return plan


def add_control(plan: dict, **values: Any) -> dict:
    """Append control entries (``tracking=False``, ...) to a plan, as ALO writes them: one-key maps.

    Args:
        plan: A plan dict.
        **values: The entries.

    Returns:
        The plan.
    """
    plan["control"] = [*(plan.get("control") or []), *({key: value} for key, value in values.items())]
    return plan


def plan_text(plan: dict) -> str:
    """A plan dict as the YAML text a benchmark writes (keys in their order).

    Args:
        plan: A plan dict.

    Returns:
        The text.
    """
    return yaml.safe_dump(plan, sort_keys=False)


def save_plan(plan: dict, folder: Path, name: str = PLAN_FILE) -> Path:
    """Write a plan into a folder (created when missing).

    Args:
        plan: A plan dict.
        folder: The folder (the run's project folder: its artifacts go beside the plan).
        name: The file name.

    Returns:
        The plan file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(plan_text(plan), encoding="utf-8")
    return path


def reused_result(work: Path, plan: dict, reuse: bool) -> dict | None:
    """A finished run's result when its plan is unchanged; otherwise the new plan is written and None returned.

    Args:
        work: The run's folder (``experimental_plan.yaml``, ``result.json``).
        plan: The run's plan.
        reuse: Whether a finished run may be reused at all.

    Returns:
        The result, or None: run it.
    """
    text = plan_text(plan)
    work.mkdir(parents=True, exist_ok=True)
    plan_path = work / PLAN_FILE
    result_path = work / "result.json"
    if reuse and result_path.is_file() and plan_path.is_file() and plan_path.read_text() == text:
        return json.loads(result_path.read_text())
    result_path.unlink(missing_ok=True)
    plan_path.write_text(text)
    return None


def keep_result(work: Path, row: dict) -> dict:
    """Keep a finished run's result beside its plan, for :func:`reused_result`.

    Args:
        work: The run's folder.
        row: The result.

    Returns:
        The result.
    """
    (work / "result.json").write_text(json.dumps(row))
    return row
