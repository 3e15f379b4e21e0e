"""The README stays a short front page whose links land: its detail lives in docs/, and
`mkdocs build --strict` (scripts/test.sh) checks links between the docs pages, but not
the README's, which GitHub renders from the repository tree."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < 250, f"README.md has {lines} lines; move detail into a docs/ page"


def test_readme_links_point_at_files_that_exist():
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert len(links) >= 10  # the front page links to the docs pages
    missing = [t for t in links if not (ROOT / t.split("#")[0]).is_file()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_every_docs_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))
    assert pages and not [p for p in pages if p not in nav]


def test_api_pages_name_objects_that_exist():
    """mkdocstrings skips a `members:` name that no longer exists without a warning, so a
    renamed call would drop out of the API docs silently; this makes it fail instead."""
    listed = 0
    for page in sorted((ROOT / "docs" / "reference").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for module, members in re.findall(
            r"^::: (\S+)\n(?:    .*\n)*?\s+members: \[(.*)\]", text, re.M
        ):
            names = [name.strip() for name in members.split(",")]
            gone = [n for n in names if not hasattr(importlib.import_module(module), n)]
            assert not gone, f"{page.name}: {module} has no {gone}"
            listed += len(names)
    assert listed >= 5
