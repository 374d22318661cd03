"""Which code is *under test*, and where in it shared state is touched.

The perturbation engine only makes a worker give way inside the user's own code: files under
the given roots (the pytest rootdir, the test file's directory, and the packages under test of
:mod:`pytest_concurrency.engine.undertest`), never the standard library, installed packages
(site-packages, dist-packages, virtual environments), pytest, pluggy or this plugin, unless a
root is more specific: a project package installed in site-packages (tox's way) is under test.
Inside that code it stops only at *shared-state operations*: attribute, global, closure and
subscript loads and stores, method loads, calls, membership tests and iteration steps.

Answers are cached per file name (:class:`CodeFilter`) and per code object (the callers keep
the offsets). Pure module: no pytest import.
"""

from __future__ import annotations

import dis
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import CodeType

from pytest_concurrency.engine import owncode

ATTRIBUTE_OPS = ("LOAD_ATTR", "STORE_ATTR", "DELETE_ATTR", "LOAD_METHOD", "LOAD_SUPER_ATTR")
GLOBAL_OPS = ("LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_FROM_DICT_OR_GLOBALS")
NAME_OPS = ("LOAD_NAME", "STORE_NAME", "DELETE_NAME")
CELL_OPS = ("LOAD_DEREF", "STORE_DEREF", "LOAD_CLASSDEREF", "LOAD_FROM_DICT_OR_DEREF")
SUBSCRIPT_OPS = ("BINARY_SUBSCR", "STORE_SUBSCR", "DELETE_SUBSCR", "BINARY_SLICE", "STORE_SLICE")
CALL_OPS = (
    "CALL_FUNCTION",
    "CALL_FUNCTION_KW",
    "CALL_METHOD",
    "CALL_FUNCTION_EX",
    "CALL",
    "CALL_KW",
)
CONTAINER_OPS = ("CONTAINS_OP", "FOR_ITER")
SHARED_STATE_OPNAMES = frozenset(
    ATTRIBUTE_OPS + GLOBAL_OPS + NAME_OPS + CELL_OPS + SUBSCRIPT_OPS + CALL_OPS + CONTAINER_OPS
)
"""Instructions before which a worker may be made to give way."""


def excluded_dirs() -> list[Path]:
    """Directories whose code is never under test: stdlib, installed packages, the tooling."""
    paths = [*owncode.stdlib_dirs(), *owncode.installed_dirs(), *owncode.tooling_paths()]
    return _unique(Path(path.rstrip(os.sep)) for path in paths)


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: dict[Path, None] = {}
    for path in paths:
        seen.setdefault(path, None)
    return list(seen)


def _deepest(path: str, directories: Sequence[str]) -> str | None:
    """The longest of ``directories`` (or files) that ``path`` is at or below."""
    below = [directory for directory in directories if owncode.is_below(path, directory)]
    return max(below, key=len) if below else None


class CodeFilter:
    """Answers "is this file the user's code?", cached per file name."""

    def __init__(self, roots: Sequence[Path], excluded: Sequence[Path] | None = None) -> None:
        self.roots = tuple(os.path.normcase(str(Path(root).resolve())) for root in roots)
        chosen = excluded_dirs() if excluded is None else excluded
        self.excluded = tuple(os.path.normcase(str(Path(path).resolve())) for path in chosen)
        self._cache: dict[str, bool] = {}

    def is_user_file(self, filename: str) -> bool:
        answer = self._cache.get(filename)
        if answer is None:
            answer = self._cache[filename] = self._judge(filename)
        return answer

    def is_user_code(self, code: CodeType) -> bool:
        return self.is_user_file(code.co_filename)

    def _judge(self, filename: str) -> bool:
        if not filename or filename.startswith("<"):
            return False  # <string>, <frozen ...>, <stdin>: no file we could own
        path = os.path.normcase(os.path.realpath(filename))
        if owncode.is_tooling_file(path):
            return False  # pytest, pluggy, this plugin: never, even below a root
        root = _deepest(path, self.roots)
        if root is None:
            return False
        if owncode.INSTALLED_DIR_NAMES.intersection(Path(path[len(root) :]).parts):
            return False  # a virtual environment inside the project, below the root
        excluded = _deepest(path, self.excluded)
        return excluded is None or len(root) > len(excluded)  # the more specific one wins


def shared_state_offsets(code: CodeType) -> frozenset[int]:
    """Byte offsets of the shared-state instructions of ``code`` (not of nested code)."""
    return frozenset(
        instruction.offset
        for instruction in dis.get_instructions(code)
        if instruction.opname in SHARED_STATE_OPNAMES
    )
