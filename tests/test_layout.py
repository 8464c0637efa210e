"""The layout's rules: dependencies point one way with no cycle (import-linter), benchmarks never reach into tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    """``lint-imports`` (pyproject.toml): apps -> assets -> vad -> alo, models below their consumers, no cycles."""
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") >= 3


def test_benchmarks_never_import_tests():
    """No benchmark puts ``tests/`` on the import path or imports a test module."""
    for path in (ROOT / "benchmarks").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"sys\.path\.(insert|append)\(.*tests", text), path.name
        assert not re.search(r"^\s*(from|import) (tests|conftest|test_)", text, re.M), path.name
