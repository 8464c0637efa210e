"""The README stays a newcomer's page and its links into ``docs/`` hold; every docs page is in the site's nav.

The site itself is built with ``mkdocs build --strict`` by ``make docs`` (part of ``make lint``), which checks the
links between docs pages; these checks cover what that build cannot see: the README, which is not in the site.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub and Python-Markdown's toc both write it (for the headings used here)."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"\s+", "-", text)


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))
    return {_slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def _nav_pages(nav: list) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _mkdocs_config() -> dict:
    class Loader(yaml.SafeLoader):
        """Reads ``!!python/name:`` tags (the mermaid fence's format function) as plain strings."""

    Loader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: suffix)
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)


def test_readme_is_at_most_200_lines():
    """The README is the newcomer's page; the deep dives live in docs/."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move the detail into docs/"


def test_readme_links_into_docs_and_to_its_own_sections_resolve():
    """Every relative link of the README names an existing file, and every anchor a heading there."""
    text = README.read_text(encoding="utf-8")
    targets = [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]
    assert any(target.startswith("docs/") for target in targets), "the README links to no docs page"
    for target in targets:
        file, _, anchor = target.partition("#")
        path = ROOT / file if file else README
        assert path.is_file(), f"README.md links to {target}, which does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"README.md links to {target}: no such heading in {file or 'README.md'}"


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists():
    """A page left out of mkdocs.yml's nav is hard to find; a nav entry without its page breaks the site."""
    config = _mkdocs_config()
    assert config["docs_dir"] == "docs"
    assert config["theme"]["name"] == "material"
    nav = _nav_pages(config["nav"])
    pages = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
    assert sorted(nav) == pages, f"nav {sorted(nav)} against docs/ {pages}"
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_the_benchmarks_page_includes_benchmarks_md():
    """BENCHMARKS.md stays at the root (the benchmark scripts rewrite its sections); the site includes it whole."""
    assert (ROOT / "BENCHMARKS.md").is_file()
    assert '--8<-- "BENCHMARKS.md"' in (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    history = set((DOCS / "benchmarks-history.md").read_text(encoding="utf-8").splitlines())
    current = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8").splitlines()
    moved = [line for line in current if line.startswith("## ") and line in history]
    assert not moved, f"sections both current and in the history: {moved}"
