"""Did the GIL come back? Readings taken at the session's start, after collection and around
each concurrent test.

On a free-threaded build the first import of an extension module that does not declare
``Py_mod_gil`` turns the GIL on for the rest of the process (CPython only warns). Every test
after that runs its threads held by the GIL, and a header that said "GIL disabled" would be
wrong. A :class:`GilReading` is the GIL state and, while the GIL is off, the names in
``sys.modules``; comparing two readings (:func:`gil_came_back`) says whether it came back in
between and which extension modules were first imported meanwhile: the suspects (CPython does
not say which module lacked the slot; the one its warning names is among them).

The state is read through :func:`pytest_concurrency.engine.cores.gil_enabled` (absent
``sys._is_gil_enabled``: enabled), the seam the tests replace to simulate a free-threaded build
on a GIL one. On a GIL build a reading is one call and keeps no module names.
Pure module: no pytest import.
"""

from __future__ import annotations

import importlib.machinery
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_concurrency import messages
from pytest_concurrency.engine import cores

if TYPE_CHECKING:
    from pytest_concurrency.engine.entries import ConcurrentEntry

WHERE_TEST = "test"
WHERE_COLLECTION = "collection"
WHERE_BETWEEN = "between"


@dataclass(frozen=True)
class GilReading:
    """The GIL state at one moment; the imported modules' names while it is off."""

    enabled: bool
    modules: frozenset[str] = frozenset()


@dataclass(frozen=True)
class GilReturn:
    """The GIL came back between two readings: where, and the suspects."""

    where: str  # WHERE_TEST, WHERE_COLLECTION or WHERE_BETWEEN
    nodeid: str | None  # the test during which (test) or before which (between) it came back
    modules: tuple[str, ...]  # extension modules first imported in between, sorted

    def cause(self) -> str:
        if not self.modules:
            return messages.GIL_CAUSE_UNKNOWN
        return messages.GIL_CAUSE_MODULES.format(modules=", ".join(self.modules))

    def describe(self) -> str:
        if self.where == WHERE_COLLECTION:
            return messages.GIL_BACK_IN_COLLECTION.format(cause=self.cause())
        if self.where == WHERE_BETWEEN:
            return messages.GIL_BACK_BETWEEN_TESTS.format(nodeid=self.nodeid, cause=self.cause())
        return messages.GIL_BACK_IN_TEST.format(nodeid=self.nodeid, cause=self.cause())

    def as_json(self) -> dict[str, object]:
        return {"where": self.where, "nodeid": self.nodeid, "modules": list(self.modules)}


def read_gil() -> GilReading:
    """The GIL state now (and, while it is off, what is imported, to compare with later)."""
    if cores.gil_enabled():
        return GilReading(enabled=True)
    return GilReading(enabled=False, modules=frozenset(sys.modules))


def gil_came_back(
    before: GilReading, after: GilReading, where: str, nodeid: str | None = None
) -> GilReturn | None:
    """The return of the GIL between ``before`` and ``after``, or None if it did not."""
    if before.enabled or not after.enabled:
        return None
    new = set(sys.modules) - before.modules
    suspects = sorted(name for name in new if is_extension_module(sys.modules.get(name)))
    return GilReturn(where=where, nodeid=nodeid, modules=tuple(suspects))


EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def is_extension_module(module: object) -> bool:
    """A module loaded from a shared library, not the standard library's (its modules, built
    in or not, all declare ``Py_mod_gil`` on a free-threaded build). Whatever else a library
    put into ``sys.modules`` is not one."""
    name = getattr(module, "__name__", None)
    if not isinstance(name, str) or name.partition(".")[0] in sys.stdlib_module_names:
        return False
    if isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader):
        return True
    path = getattr(module, "__file__", None)
    return isinstance(path, str) and path.endswith(EXTENSION_SUFFIXES)


def mark_entry(entry: ConcurrentEntry, after: GilReading, back: GilReturn | None) -> None:
    """A concurrent entry's GIL keys: the state at the test's end, and whether (and with which
    suspects) it came back during the test."""
    entry["gil_enabled"] = after.enabled
    entry["gil_reenabled"] = back is not None
    entry["gil_modules"] = list(back.modules) if back is not None else []


def returned_in(entry: ConcurrentEntry) -> GilReturn | None:
    """The return of the GIL an entry records (also one made by a pytest-xdist worker)."""
    if not entry.get("gil_reenabled"):
        return None
    modules = tuple(str(name) for name in entry.get("gil_modules") or ())
    return GilReturn(where=WHERE_TEST, nodeid=entry["nodeid"], modules=modules)
