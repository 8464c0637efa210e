"""Writing one section of BENCHMARKS.md without touching the others."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the ``## {title}`` section of a markdown file.

    Args:
        path: The markdown file.
        title: Section title.
        body: Section text (without the heading).
    """
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"## {title}\n\nMeasured {stamp} on this machine (2 CPU cores).\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text, encoding="utf-8")
