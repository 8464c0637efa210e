"""A benchmark's report: numbers for its tables, its command line, and its section of ``BENCHMARKS.md``.

Every benchmark that writes a section takes ``--benchmarks-file`` (default: the repository's ``BENCHMARKS.md``;
a scratch copy for a trial run) and, where it writes one section, ``--section`` (its title), through
:func:`add_report_options`; :func:`write_section` replaces that one section and leaves the others as they are.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.harness.paths import BENCHMARKS_FILE


def fmt(value: float | None, digits: int = 1, missing: str = "n/a") -> str:
    """A number for a table cell.

    Args:
        value: The number (None or NaN: missing).
        digits: Decimals.
        missing: What a missing number reads.

    Returns:
        The text.
    """
    if value is None or value != value:  # NaN
        return missing
    return f"{value:.{digits}f}"


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The command that ran a benchmark, as its section quotes it.

    Args:
        module: The benchmark (``benchmarks.accuracy``).
        argv: Its arguments (default: this process's).

    Returns:
        ``python -m benchmarks.accuracy --products gravel``.
    """
    return f"python -m {module} {' '.join(sys.argv[1:] if argv is None else argv)}".strip()


def add_report_options(parser: argparse.ArgumentParser, section: str | None = None, help_text: str = "") -> None:
    """The ``--benchmarks-file`` option, and ``--section`` when the benchmark writes one section.

    Args:
        parser: The benchmark's parser.
        section: The default section title (None: no ``--section`` option).
        help_text: ``--section``'s help (default: "BENCHMARKS.md section the table replaces").
    """
    parser.add_argument(
        "--benchmarks-file",
        type=Path,
        default=BENCHMARKS_FILE,
        help="the markdown file whose section is written (default: BENCHMARKS.md; a scratch copy for a trial run)",
    )
    if section is not None:
        parser.add_argument("--section", default=section, help=help_text or "BENCHMARKS.md section the table replaces")


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
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text, encoding="utf-8")
