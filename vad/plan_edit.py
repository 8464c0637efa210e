"""Copies of the user's plan with a few values changed, comments and layout kept, and the diff to show.

The page and the tuner never edit the user's plan: they write a copy beside it (so that its relative paths
still resolve) and show the unified diff. Values are replaced in the text at the positions YAML's composer
reports, then the copy is checked: loaded, it must equal the original with exactly those values changed, and
it must pass the plan's own validation.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from alo.errors import PlanError


@dataclass(frozen=True)
class Change:
    """One value to set in a plan.

    Attributes:
        where: ``("external_path", key)``, or ``(pipeline, step, key, ...)`` with ``pipeline`` ``train`` or
            ``inference`` (more keys reach into nested args: ``("train", "train", "model_parameters", name)``).
        value: The new value (a YAML scalar or list).
    """

    where: tuple[str, ...]
    value: Any


def _mapping_value(node: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


def _target(root: yaml.Node, where: tuple[str, ...]) -> tuple[yaml.Node, str]:
    """The mapping that holds (or will hold) the key, and the key."""
    if where[0] == "external_path" and len(where) == 2:
        found = _mapping_value(root, "external_path")
        entries = found[1].value if found and isinstance(found[1], yaml.SequenceNode) else []
        for entry in entries:
            if _mapping_value(entry, where[1]) is not None:
                return entry, where[1]
        msg = f"plan error: the plan has no external_path.{where[1]}; add it to the plan first"
        raise PlanError(msg)
    pipeline, step, *keys = where
    found = _mapping_value(root, "user_parameters")
    blocks = found[1].value if found and isinstance(found[1], yaml.SequenceNode) else []
    for block in blocks:
        steps = _mapping_value(block, f"{pipeline}_pipeline")
        if steps is None or not isinstance(steps[1], yaml.SequenceNode):
            continue
        for entry in steps[1].value:
            name = _mapping_value(entry, "step")
            if name is None or name[1].value != step:
                continue
            args = _mapping_value(entry, "args")
            if args and isinstance(args[1], yaml.SequenceNode) and args[1].value:
                mapping = args[1].value[0]
                for inner in keys[:-1]:  # nested args: model_parameters.patchcore_backbone
                    found = _mapping_value(mapping, inner)
                    if found is None or not isinstance(found[1], yaml.MappingNode) or not found[1].value:
                        msg = f"plan error: the '{step}' step has no '{inner}' map; add it to the plan first"
                        raise PlanError(msg)
                    mapping = found[1]
                return mapping, keys[-1]
            msg = f"plan error: the {pipeline} pipeline's '{step}' step has no args list; add 'args: [{{}}]' first"
            raise PlanError(msg)
    msg = f"plan error: the plan has no '{step}' step in its {pipeline} pipeline"
    raise PlanError(msg)


def _scalar_text(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("...").strip()


def apply_changes(text: str, changes: list[Change]) -> str:
    """The plan text with the values set, everything else (comments, order, layout) as it was.

    Args:
        text: The plan's YAML text.
        changes: The values to set.

    Returns:
        The new text.

    Raises:
        PlanError: A value has no place in the plan, or the edit did not give the intended plan.
    """
    expected = yaml.safe_load(text)
    for change in changes:
        root = yaml.compose(text)
        if root is None:
            msg = "plan error: the plan is empty; nothing to edit"
            raise PlanError(msg)
        mapping, key = _target(root, change.where)
        found = _mapping_value(mapping, key)
        new = _scalar_text(change.value)
        if found is not None:
            start, end = found[1].start_mark.index, found[1].end_mark.index
            if isinstance(found[1], yaml.ScalarNode) and found[1].value == "" and start == end:
                new = " " + new  # ``key:`` with nothing after it
            elif isinstance(found[1], yaml.CollectionNode) and not found[1].flow_style:
                # a block list or map (``key:`` then ``- item`` lines) ends where the next key begins: replace
                # from the key's colon to the end of its last line, and write the value in flow style after it
                start = text.index(":", found[0].end_mark.index) + 1
                end = text.rindex("\n", start, end) + 1 if "\n" in text[start:end] else end
                new = f" {new}\n"
            text = text[:start] + new + text[end:]
        else:  # a new first key of the mapping, at its column
            first = mapping.value[0][0].start_mark if mapping.value else None
            if first is None or not isinstance(mapping, yaml.MappingNode) or mapping.flow_style:
                msg = f"plan error: cannot add {key} to {'.'.join(change.where[:-1])}; add it to the plan by hand"
                raise PlanError(msg)
            text = text[: first.index] + f"{key}: {new}\n" + " " * first.column + text[first.index :]
        _set(expected, change)
    if yaml.safe_load(text) != expected:
        msg = "plan error: the plan copy did not come out as intended; edit the plan by hand"
        raise PlanError(msg)
    return text


def _set(plan: dict[str, Any], change: Change) -> None:
    """Set a change in the loaded plan (what the edited text must load to)."""
    if change.where[0] == "external_path":
        for entry in plan["external_path"]:
            if change.where[1] in entry:
                entry[change.where[1]] = change.value
        return
    pipeline, step, *keys = change.where
    for block in plan["user_parameters"]:
        for entry in block.get(f"{pipeline}_pipeline") or []:
            if entry.get("step") == step:
                mapping = entry["args"][0]
                for inner in keys[:-1]:
                    mapping = mapping[inner]
                mapping[keys[-1]] = change.value
                return


@dataclass(frozen=True)
class PlanCopy:
    """A plan copy written beside the plan.

    Attributes:
        path: The new file.
        diff: Unified diff from the user's plan.
    """

    path: Path
    diff: str


def write_copy(plan_path: Path, changes: list[Change], label: str) -> PlanCopy:
    """Write ``{plan stem}.{label}-{UTC time}.yaml`` beside the plan with the values set, and validate it.

    Args:
        plan_path: The user's plan.
        changes: The values to set.
        label: A word for the copy's name (``threshold``, ``train``).

    Returns:
        The copy and its diff.

    Raises:
        PlanError: The copy is not a valid plan (nothing is left behind).
    """
    from alo.plan import load_plan

    text = plan_path.read_text(encoding="utf-8")
    edited = apply_changes(text, changes)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = plan_path.with_name(f"{plan_path.stem}.{label}-{stamp}.yaml")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # never over another file
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(edited)
    try:
        load_plan(path)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    diff = "".join(
        difflib.unified_diff(
            text.splitlines(keepends=True), edited.splitlines(keepends=True), plan_path.name, path.name
        )
    )
    return PlanCopy(path, diff)
