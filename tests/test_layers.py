"""The package's layers: what each may import (checked on the source, nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_concurrency"
RUNNERS_MAY_IMPORT = ("runners", "races", "engine", "messages", "errors")
"""The parts of the package that ``runners/`` may import: never ``driver/`` nor ``plugin/``."""


def imported_modules(path: Path) -> list[str]:
    """Every name a file imports, at the top or inside a function, relative imports resolved
    (``from a.b import c`` is ``a.b.c``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_runners_import_neither_pytest_nor_the_driver_or_plugin() -> None:
    offending: list[str] = []
    for path in sorted((PACKAGE / "runners").glob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in ("pytest", "_pytest"):
                offending.append(f"{path.name}: {name}")
            elif top == "pytest_concurrency":
                part = name.split(".")[1] if "." in name else ""
                if part not in RUNNERS_MAY_IMPORT:
                    offending.append(f"{path.name}: {name}")
    assert offending == []


def test_no_runner_module_is_longer_than_600_lines() -> None:
    lengths = {
        path.name: len(path.read_text(encoding="utf-8").splitlines())
        for path in (PACKAGE / "runners").glob("*.py")
    }
    assert {name: n for name, n in lengths.items() if n > 600} == {}
