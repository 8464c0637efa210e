"""Where the benchmarks run and write: the repository root, its ``results/`` folder and ``BENCHMARKS.md``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"
BENCHMARKS_FILE = ROOT / "BENCHMARKS.md"
