"""The house's rules, read off the source: rooms, arrows, sizes (see ARCHITECTURE.md).

Every module is parsed (not imported); every ``import`` counts, lazy ones inside functions
included. Imports under ``if TYPE_CHECKING:`` are types only: they must still point the right
way, but they cannot form a cycle at run time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "pytest_concurrency"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
MAX_ROOT_MODULES = 8
MAX_LINES = 600
SHARED = {"messages", "errors"}  # leaf modules every room may import
ROOMS: dict[str, set[str]] = {
    "plugin": {"plugin", "driver", "runners", "races", "engine", "scaling"},
    "driver": {"driver", "runners", "races", "engine"},
    "runners": {"runners", "races", "engine"},
    "races": {"races", "engine"},
    "engine": {"engine"},
    "scaling": {"scaling", "engine"},
}
PYTEST_NAMES = {"pytest", "_pytest", "pluggy"}


@dataclass(frozen=True)
class Import:
    source: str  # dotted name of the importing module
    target: str  # dotted name of what it imports
    line: int
    typing_only: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def resolve(source: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))
    typing_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.body:
                for inner in ast.walk(child):
                    if hasattr(inner, "lineno"):
                        typing_lines.add(inner.lineno)
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno, node.lineno in typing_lines)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(name, is_package, node)
            for alias in node.names:
                # "from pkg import module" imports the module; "from module import name" not.
                candidate = f"{base}.{alias.name}"
                target = candidate if candidate in known else base
                yield Import(name, target, node.lineno, node.lineno in typing_lines)


def all_imports() -> list[Import]:
    found = modules()
    known = set(found)
    return [imp for name, path in found.items() for imp in imports_of(name, path, known)]


def room_of(name: str) -> str | None:
    """The room (``plugin``, ``engine``...) of one of our modules; None for a root module."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


def own_imports() -> list[Import]:
    return [
        imp
        for imp in all_imports()
        if imp.target.split(".")[0] == PACKAGE and imp.target != PACKAGE
    ]


def test_the_package_root_holds_few_modules() -> None:
    root_modules = [path.name for path in ROOT.glob("*.py")]
    assert len(root_modules) <= MAX_ROOT_MODULES, sorted(root_modules)


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_the_size_limit(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_every_room_is_a_known_room() -> None:
    rooms = {path.name for path in ROOT.iterdir() if (path / "__init__.py").exists()}
    assert rooms == set(ROOMS)


def test_only_the_plugin_imports_pytest() -> None:
    offenders = [
        f"{imp.source}:{imp.line} imports {imp.target}"
        for imp in all_imports()
        if imp.target.split(".")[0] in PYTEST_NAMES and room_of(imp.source) != "plugin"
    ]
    assert offenders == []


def test_the_arrows_point_one_way() -> None:
    offenders = []
    for imp in own_imports():
        source_room, target_room = room_of(imp.source), room_of(imp.target)
        target_leaf = imp.target.split(".")[1]
        if target_leaf in SHARED:
            continue
        if source_room is None:  # the package's __init__: imports nothing of ours
            offenders.append(f"{imp.source}:{imp.line} imports {imp.target}")
            continue
        if target_room not in ROOMS[source_room]:
            offenders.append(f"{imp.source}:{imp.line} imports {imp.target}")
    assert offenders == []


def test_messages_and_errors_import_nothing_of_ours() -> None:
    # scaling/messages.py too: the scaling room's texts, a leaf like messages.py
    offenders = [imp for imp in own_imports() if imp.source.split(".")[-1] in SHARED]
    assert offenders == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def run_time_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in own_imports():
        if imp.typing_only or imp.source == imp.target:
            continue
        # A module importing its own package's __init__ is how Python loads it: not an arrow.
        if imp.source.startswith(imp.target + "."):
            continue
        graph.setdefault(imp.source, set()).add(imp.target)
    return graph


def test_there_is_no_import_cycle() -> None:
    assert find_cycle(run_time_graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def dotted_literals() -> Iterator[tuple[str, int, str]]:
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith(PACKAGE + ".")
                and " " not in node.value
            ):
                yield name, node.lineno, node.value


def test_every_module_named_in_a_string_exists() -> None:
    """``sys.modules.get("pytest_concurrency.x")`` and entry points name modules by string:
    a module moved without them would silently turn a feature off."""
    known = set(modules())
    missing = [
        f"{name}:{line} names {value}"
        for name, line, value in dotted_literals()
        if value not in known and value.rsplit(".", 1)[0] not in known
    ]
    assert missing == []


def test_the_entry_point_is_the_plugin_package() -> None:
    pyproject = (ROOT.parent / "pyproject.toml").read_text()
    assert f'concurrency = "{PACKAGE}.plugin"' in pyproject
    assert f"{PACKAGE}.plugin" in modules()


MODE_NAMES = {"threads", "processes", "asyncio"}
MODE_ROOMS = {"runners", "scaling"}  # a runner is its mode; scaling measures modes by name


def test_no_mode_branch_outside_the_runners() -> None:
    """``if mode == "threads"`` belongs in a runner; elsewhere, ask engine/modes.py."""
    offenders = []
    for name, path in modules().items():
        if room_of(name) in MODE_ROOMS or name.endswith("engine.modes"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(isinstance(s, ast.Constant) and s.value in MODE_NAMES for s in sides):
                    offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_every_mode_has_a_runner() -> None:
    from pytest_concurrency.engine.modes import MODES
    from pytest_concurrency.runners import RUNNERS

    assert set(RUNNERS) == set(MODES)


def test_the_architecture_page_names_every_module() -> None:
    """ARCHITECTURE.md's table lists each room's modules: a new module is placed there too."""
    page = (ROOT.parent / "ARCHITECTURE.md").read_text()
    unnamed = [
        name
        for name in modules()
        if room_of(name) is not None
        and name.count(".") == 2
        and f"`{name.rsplit('.', 1)[1]}`" not in page
    ]
    assert unnamed == []
