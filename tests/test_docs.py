"""The documentation a clone carries: the README and docs/ stand alone, and the module map names every module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """Markdown link targets that are not web addresses or in-page anchors."""
    return [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


def test_relative_links_are_found() -> None:
    assert relative_links("see [a](docs/a.md#x), [b](http://127.0.0.1/b.md) and [c](#c)") == ["docs/a.md"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_cite_only_what_the_repository_holds(document: Path) -> None:
    text = document.read_text()
    missing = [t for t in relative_links(text) if not (document.parent / t).exists()]
    assert not missing, f"{document.name} links to files the repository does not hold: {missing}"
    outside = re.findall(r"\.\./shared|\b(?:DESIGN|PAPER|STYLE)\.md\b", text)
    assert not outside, f"{document.name} cites documents outside the repository: {outside}"


def test_the_module_map_names_every_module() -> None:
    """docs/architecture.md is the contributor's map: a module added, moved or renamed must be entered there."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    modules = [p for package in ("search", "service") for p in (ROOT / package).rglob("*.py")]

    def named(module: Path) -> bool:  # a subpackage (search/merge/) may be named as a whole
        folder = module.parent.relative_to(ROOT)
        return f"`{module.relative_to(ROOT)}`" in text or (len(folder.parts) > 1 and f"`{folder}/`" in text)

    unnamed = [str(p.relative_to(ROOT)) for p in modules if p.name != "__init__.py" and not named(p)]
    assert not unnamed, f"docs/architecture.md does not name {unnamed}"
    named = set(re.findall(r"`((?:search|service)/[\w/]+\.py)`", text))
    stale = sorted(n for n in named if not (ROOT / n).exists())
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"
