"""The ``inference_summary.yaml`` contract read by the edge conductor.

Keys (written sorted): ``date`` (UTC ``%Y-%m-%d %H:%M:%S``), ``file_path``, ``note`` (<=128
chars), ``probability`` (label -> value, 2 decimals, sums to 1), ``result`` (<=32 chars),
``score`` (in [0, 1], 2 decimals), ``version``. The contract is checked before writing.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

# libyaml's emitter and parser where PyYAML has them (same text, about 10x faster: it counts in an edge request).
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_RESULT = 32
MAX_NOTE = 128
KEYS = ("date", "file_path", "note", "probability", "result", "score", "version")


class SummaryContractError(ValueError):
    """A summary that would break the edge conductor's contract."""


def rounded_probability(values: dict[str, float]) -> dict[str, float]:
    """Round label probabilities to 2 decimals so that they still sum to exactly 1.

    The remainder of the rounding goes to the most probable label.

    Args:
        values: Label -> probability (non-negative, summing to about 1).

    Returns:
        Label -> probability with 2 decimals, summing to 1.00.
    """
    total = sum(values.values())
    if not values or total <= 0:
        msg = f"probabilities must be non-negative and not all zero, got {values}"
        raise SummaryContractError(msg)
    rounded = {label: round(value / total, 2) for label, value in values.items()}
    top = max(rounded, key=lambda label: values[label])
    rounded[top] = round(rounded[top] + 1.0 - sum(rounded.values()), 2)
    return rounded


def validate_summary(summary: dict[str, Any]) -> None:
    """Check a summary against the contract.

    Args:
        summary: The summary mapping.

    Raises:
        SummaryContractError: Naming the first key that breaks the contract.
    """
    if sorted(summary) != sorted(KEYS):
        msg = f"summary keys must be exactly {list(KEYS)}, got {sorted(summary)}"
        raise SummaryContractError(msg)
    try:
        datetime.strptime(summary["date"], DATE_FORMAT)
    except (TypeError, ValueError):
        msg = f"summary date must be UTC '{DATE_FORMAT}', got {summary['date']!r}"
        raise SummaryContractError(msg) from None
    for key, limit in (("result", MAX_RESULT), ("note", MAX_NOTE)):
        value = summary[key]
        if not isinstance(value, str) or len(value) > limit:
            msg = f"summary {key} must be a string of at most {limit} characters, got {value!r}"
            raise SummaryContractError(msg)
    score = summary["score"]
    if not isinstance(score, float) or not 0.0 <= score <= 1.0 or round(score, 2) != score:
        msg = f"summary score must be a float in [0, 1] with 2 decimals, got {score!r}"
        raise SummaryContractError(msg)
    probability = summary["probability"]
    if not isinstance(probability, dict) or not probability:
        msg = f"summary probability must be a non-empty map label -> value, got {probability!r}"
        raise SummaryContractError(msg)
    for label, value in probability.items():
        valid = isinstance(value, float) and 0 <= value <= 1 and round(value, 2) == value
        if not isinstance(label, str) or not valid:
            msg = f"summary probability {label!r} must be a float in [0, 1] with 2 decimals, got {value!r}"
            raise SummaryContractError(msg)
    if not math.isclose(sum(probability.values()), 1.0, abs_tol=1e-9):
        msg = f"summary probabilities must sum to 1, got {sum(probability.values())}"
        raise SummaryContractError(msg)
    for key in ("file_path", "version"):
        if not isinstance(summary[key], str):
            msg = f"summary {key} must be a string, got {summary[key]!r}"
            raise SummaryContractError(msg)


def build_summary(
    *, result: str, score: float, probability: dict[str, float], note: str, file_path: str, version: str
) -> dict[str, Any]:
    """Assemble a contract-valid summary (rounding and truncating where the contract says).

    Args:
        result: The predicted label, or counts such as ``OK:12,NG:3``.
        score: Certainty in [0, 1].
        probability: Label -> probability.
        note: Free text; cut to 128 characters.
        file_path: The scored file or folder.
        version: The solution version.

    Returns:
        The validated summary mapping.
    """
    summary = {
        "date": datetime.now(UTC).strftime(DATE_FORMAT),
        "file_path": str(file_path),
        "note": note[:MAX_NOTE],
        "probability": rounded_probability(probability),
        "result": result,
        "score": round(min(max(float(score), 0.0), 1.0), 2),
        "version": str(version),
    }
    validate_summary(summary)
    return summary


def write_summary(summary: dict[str, Any], path: Path) -> Path:
    """Validate and write a summary as YAML with sorted keys.

    Args:
        summary: A mapping from :func:`build_summary`.
        path: Destination file.

    Returns:
        The path written.
    """
    validate_summary(summary)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump(summary, Dumper=_DUMPER, sort_keys=True, allow_unicode=True), encoding="utf-8")
    return path


def read_summary(path: Path) -> dict[str, Any]:
    """Read a summary written by :func:`write_summary`.

    Args:
        path: The ``inference_summary.yaml`` file.

    Returns:
        The summary mapping.
    """
    loader = _LOADER(path.read_text(encoding="utf-8"))  # a safe loader: libyaml's or PyYAML's SafeLoader
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
