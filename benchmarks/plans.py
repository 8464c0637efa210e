"""Reading and editing the bundled plan as a dict, the way the benchmarks derive their plans from it."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def bundled_plan() -> dict:
    """The bundled ``experimental_plan.yaml`` as a dict (a fresh copy each call).

    Returns:
        The plan.
    """
    return yaml.safe_load((ROOT / "experimental_plan.yaml").read_text(encoding="utf-8"))


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
