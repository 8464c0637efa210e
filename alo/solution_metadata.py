"""ALO's solution metadata: what an edge app sends with ``--system`` and with each ``--loop`` request.

Of ALO's shape we read ``metadata_version``, ``edgeapp_interface.redis_server_uri`` (``host:port``),
``edgeapp_interface.redis_db_number`` and the ``pipeline`` entries of ``type: inference``:
``dataset_uri`` (-> ``load_inference_data_path``, a folder or one image file), ``artifact_uri``
(-> ``save_inference_artifacts_path``), ``model_uri`` (-> ``load_model_path``) and
``parameters.selected_user_parameters`` (``[{step, args}]``, merged into the plan's step arguments and
validated as the plan's are). Other ALO keys are ignored; a value of a key we read that we cannot use is
refused with one line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alo.errors import PlanError
from alo.plan import Plan, StepPlan

DEFAULT_REDIS = "127.0.0.1:6379"


class _Loose(BaseModel):
    """ALO's keys that we do not use are ignored, not refused (the same file drives ALO's other tools)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class StepParameters(_Loose):
    """One step's argument update."""

    step: str
    args: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)

    def merged_args(self) -> dict[str, Any]:
        """The arguments as one map (ALO writes them as a list of one map, or a map).

        Returns:
            The map.
        """
        if isinstance(self.args, dict):
            return dict(self.args)
        merged: dict[str, Any] = {}
        for item in self.args:
            merged.update(item)
        return merged


class PipelineParameters(_Loose):
    """A pipeline entry's ``parameters``."""

    selected_user_parameters: list[StepParameters] = Field(default_factory=list)


class PipelineEntry(_Loose):
    """One ``pipeline`` entry."""

    type: str = "inference"
    dataset_uri: str | list[str] | None = None
    artifact_uri: str | list[str] | None = None
    model_uri: str | list[str] | None = None
    parameters: PipelineParameters = Field(default_factory=PipelineParameters)

    @field_validator("dataset_uri", "artifact_uri", "model_uri")
    @classmethod
    def _one_location(cls, value: str | list[str] | None) -> str | None:
        """ALO allows a list of URIs; a local pipeline takes exactly one local path."""
        if isinstance(value, list):
            if len(value) != 1:
                msg = f"give one path, got {len(value)}"
                raise ValueError(msg)
            value = value[0]
        if value is not None and "://" in value and not value.startswith("file://"):
            msg = f"{value!r} is not a local path (only local folders and files are served here)"
            raise ValueError(msg)
        return value.removeprefix("file://") if value else None


class EdgeAppInterface(_Loose):
    """Where the edge app's Redis is."""

    redis_server_uri: str = DEFAULT_REDIS
    redis_db_number: int = Field(0, ge=0)

    @field_validator("redis_server_uri")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.removeprefix("redis://").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            msg = f"redis_server_uri must be host:port, got {value!r}"
            raise ValueError(msg)
        return value.removeprefix("redis://")


class SolutionMetadata(_Loose):
    """The parts of ALO's solution metadata that drive inference."""

    metadata_version: str | int | float | None = None
    edgeapp_interface: EdgeAppInterface = Field(default_factory=EdgeAppInterface)
    pipeline: list[PipelineEntry] = Field(default_factory=list)

    @property
    def redis_host_port(self) -> tuple[str, int]:
        """``(host, port)`` of the Redis server."""
        host, _, port = self.edgeapp_interface.redis_server_uri.rpartition(":")
        return host.strip("[]"), int(port)

    def inference(self) -> PipelineEntry | None:
        """The ``type: inference`` entry, if any.

        Returns:
            The entry, or None.
        """
        found = [entry for entry in self.pipeline if entry.type == "inference"]
        return found[0] if found else None

    def apply(self, plan: Plan) -> Plan:
        """The plan as this metadata changes it (the plan object itself is left as it is).

        Args:
            plan: The loaded plan.

        Returns:
            A new plan: paths, step arguments and version replaced where the metadata gives them.

        Raises:
            PlanError: A step the plan's inference pipeline does not have.
        """
        changes: dict[str, Any] = {}
        if self.metadata_version is not None:
            changes["version"] = str(self.metadata_version)
        entry = self.inference()
        if entry is not None:
            paths = {
                "load_inference_data_path": entry.dataset_uri,
                "save_inference_artifacts_path": entry.artifact_uri,
                "load_model_path": entry.model_uri,
            }
            given = {key: value for key, value in paths.items() if value is not None}
            if given:
                changes["external_path"] = plan.external_path.model_copy(update=given)
            updates = entry.parameters.selected_user_parameters
            if updates:
                changes["pipelines"] = {**plan.pipelines, "inference": _updated_steps(plan, updates)}
        return dataclasses.replace(plan, **changes, changed_by="solution metadata") if changes else plan


def _updated_steps(plan: Plan, updates: list[StepParameters]) -> list[StepPlan]:
    steps = list(plan.pipelines.get("inference", []))
    names = [step.name for step in steps]
    for update in updates:
        if update.step not in names:
            msg = (
                f"plan error: solution metadata names step '{update.step}', which the inference pipeline does not "
                f"have; use one of {', '.join(names)}"
            )
            raise PlanError(msg)
        index = names.index(update.step)
        step = steps[index]
        steps[index] = dataclasses.replace(step, args={**step.args, **update.merged_args()})
    return steps


def parse_metadata(source: str | dict[str, Any]) -> SolutionMetadata:
    """Read solution metadata from a YAML/JSON file, a JSON string, or a parsed map.

    Args:
        source: A path, a JSON (or YAML) text, or a map.

    Returns:
        The metadata.

    Raises:
        PlanError: Unreadable or invalid metadata, as one line.
    """
    if isinstance(source, str):
        text = source
        looks_like_path = not source.lstrip().startswith(("{", "[")) and "\n" not in source
        if looks_like_path:
            path = Path(source).expanduser()
            if not path.is_file():
                msg = f"plan error: solution metadata {source!r} is neither a file nor a JSON text; fix --system"
                raise PlanError(msg)
            text = path.read_text(encoding="utf-8")
        try:
            raw = json.loads(text)
        except ValueError:
            try:
                raw = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                msg = f"plan error: solution metadata is neither JSON nor YAML ({str(exc).splitlines()[0]})"
                raise PlanError(msg) from None
    else:
        raw = source
    if not isinstance(raw, dict):
        msg = f"plan error: solution metadata must be a map with a 'pipeline' list, got {type(raw).__name__}"
        raise PlanError(msg)
    try:
        return SolutionMetadata.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        msg = f"plan error: solution metadata '{where}': {error['msg']}; fix the metadata"
        raise PlanError(msg) from None
