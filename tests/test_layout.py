"""The test suite's own layout: test modules share helpers through helper modules and conftest.py, never each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MODULES = sorted(TESTS.glob("test_*.py"))


def imported_test_modules(tree: ast.AST) -> list[str]:
    """The `tests.test_*` modules an `ast` tree imports, wherever the import statement stands (relative ones too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("tests.test_")]
        elif isinstance(node, ast.ImportFrom):
            package = "tests" if node.level else ""
            module = ".".join(part for part in (package, node.module or "") if part)
            if module.startswith("tests.test_") or (node.level and (node.module or "").startswith("test_")):
                found.append(module)
            elif module == "tests":
                found += [f"tests.{alias.name}" for alias in node.names if alias.name.startswith("test_")]
    return found


def test_imports_of_test_modules_are_found() -> None:
    source = "import tests.test_a\nfrom tests.test_b import x\nfrom tests import test_c, dicomfiles\n"
    source += "def f():\n    from .test_d import y\n    from tests.conftest import z\n    import tests.dicomfiles\n"
    assert imported_test_modules(ast.parse(source)) == ["tests.test_a", "tests.test_b", "tests.test_c", "tests.test_d"]


def test_the_suite_has_test_modules() -> None:
    assert len(MODULES) > 10 and TESTS / "test_layout.py" in MODULES


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_no_test_module_imports_another(module: Path) -> None:
    imported = imported_test_modules(ast.parse(module.read_text(), filename=str(module)))
    assert not imported, (
        f"{module.name} imports the test module(s) {sorted(set(imported))}: "
        "move what they share into a helper module (or a fixture into tests/conftest.py)"
    )
