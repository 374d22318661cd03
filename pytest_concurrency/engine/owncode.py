"""The one answer to "whose code is this file?": the plugin's, the tooling's, the standard
library's, an installed package's, or the user's.

Every check of a frame or a file name asks here, so that moving a module never changes which
frames count as the plugin's. :func:`is_user_file` is the rule every failure origin, crash
origin, lock site and scaling wait site follows. Directories are found without importing
pytest or pluggy. Pure module: no pytest import.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import site
import sysconfig
from collections.abc import Iterable

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep
"""The ``pytest_concurrency`` package directory, with a trailing separator."""
INSTALLED_DIR_NAMES = frozenset({"site-packages", "dist-packages"})
"""Any file below a directory with one of these names is installed code, wherever it lives."""
TOOLING_MODULES = ("pytest", "_pytest", "pluggy")


def is_below(path: str, directory: str) -> bool:
    """Is ``path`` the file or directory ``directory``, or below it?"""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _with_sep(paths: Iterable[str]) -> tuple[str, ...]:
    found = {os.path.realpath(path) for path in paths if path}
    return tuple(sorted(path.rstrip(os.sep) + os.sep for path in found))


@functools.cache
def stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return _with_sep(paths[key] for key in ("stdlib", "platstdlib") if key in paths)


@functools.cache
def installed_dirs() -> tuple[str, ...]:
    """Where installed packages live: the environment's site-packages and the user site."""
    paths = sysconfig.get_paths()
    found = [paths[key] for key in ("purelib", "platlib") if key in paths]
    found.extend(getattr(site, "getsitepackages", list)())
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if isinstance(user_site, str):
        found.append(user_site)
    return _with_sep(found)


def module_location(name: str) -> str | None:
    """Where the module ``name`` ("pkg" or "pkg.sub") lives: its package directory (the first
    one of a namespace package) or its single file, found without importing it or its
    parents (an import could run the user's code, or fail); None if it cannot be found."""
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)
        for part in rest:
            locations = spec.submodule_search_locations if spec is not None else None
            if not locations:
                return None
            spec = importlib.machinery.PathFinder.find_spec(part, list(locations))
    except Exception:  # a broken finder, a bad name: not found
        return None
    if spec is None:
        return None
    if spec.origin in (None, "namespace") and spec.submodule_search_locations:
        return os.path.realpath(next(iter(spec.submodule_search_locations)))
    if not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    origin = os.path.realpath(spec.origin)
    if spec.submodule_search_locations:
        return os.path.dirname(origin)
    return origin  # pytest.py is one module next to _pytest/


@functools.cache
def tooling_paths() -> tuple[str, ...]:
    """pytest's, pluggy's and this plugin's directories (pytest.py as a file), each ending in a
    separator except single files."""
    paths: list[str] = [PACKAGE_DIR]
    for name in TOOLING_MODULES:
        location = module_location(name)
        if location is None:
            continue
        paths.append(location if location.endswith(".py") else location + os.sep)
    return tuple(dict.fromkeys(paths))


@functools.lru_cache(maxsize=4096)
def is_plugin_file(filename: str) -> bool:
    """A file of this plugin."""
    return os.path.realpath(filename).startswith(PACKAGE_DIR)


@functools.lru_cache(maxsize=4096)
def is_tooling_file(filename: str) -> bool:
    """A file of this plugin, pytest or pluggy."""
    path = os.path.realpath(filename)
    return any(path == tool or path.startswith(tool) for tool in tooling_paths())


@functools.lru_cache(maxsize=4096)
def is_stdlib_file(filename: str) -> bool:
    """The standard library itself, not a site-packages directory below it."""
    path = os.path.realpath(filename)
    return path.startswith(stdlib_dirs()) and not is_installed_file(filename)


@functools.lru_cache(maxsize=4096)
def is_installed_file(filename: str) -> bool:
    """An installed package: below site-packages or dist-packages, or an install directory."""
    path = os.path.realpath(filename)
    if INSTALLED_DIR_NAMES.intersection(path.split(os.sep)):
        return True
    return path.startswith(installed_dirs())


@functools.lru_cache(maxsize=4096)
def is_user_file(filename: str) -> bool:
    """A file of the user's code: where a failure's origin, a crash or a lock's site may point.

    Everything except this plugin, pytest, pluggy, the standard library and code without a
    file (``<frozen ...>``, ``<string>``: what generated it called it). An installed
    third-party package is the user's code here: a race inside a library points at its line.
    """
    if filename.startswith("<"):
        return False
    return not (is_tooling_file(filename) or is_stdlib_file(filename))
