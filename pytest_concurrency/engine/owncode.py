"""The one answer to "whose code is this file?": the plugin's, the tooling's, the standard
library's, an installed package's, or the user's, and of the user's, what is *under test*.

Every check of a frame or a file name asks here, so that moving a module never changes which
frames count as the plugin's. :func:`is_user_file` is the question every consumer asks: the
perturbation and the controlled scheduler (through the same :class:`CodeFilter`), lock tracking
and the lock-order graph, hang stacks, failure origins, crash origins and scaling wait sites.
While a test runs, the plugin makes the test's code under test the answer
(:func:`judged_by`: the rootdir, the test's folder, the project's packages wherever they are
installed, the named packages); between tests, the session's (:func:`use_session_roots`). Only
where neither was given (a worker process started with none, a pure unit test) does the plain
rule answer: everything but this plugin, pytest, pluggy, the standard library and code without
a file. Directories are found without importing pytest or pluggy. Pure module: no pytest import.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.machinery
import importlib.util
import os
import site
import sysconfig
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import CodeType

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
def is_outside_tooling(filename: str) -> bool:
    """The plain rule, where no code under test was given: everything except this plugin,
    pytest, pluggy, the standard library and code without a file (``<frozen ...>``,
    ``<string>``: what generated it called it); an installed package counts."""
    if filename.startswith("<"):
        return False
    return not (is_tooling_file(filename) or is_stdlib_file(filename))


# -- the code under test: roots, and the filter that judges by them -----------------------------


def excluded_dirs() -> list[Path]:
    """Directories whose code is never under test: stdlib, installed packages, the tooling."""
    paths = [*stdlib_dirs(), *installed_dirs(), *tooling_paths()]
    return list(dict.fromkeys(Path(path.rstrip(os.sep)) for path in paths))


def _deepest(path: str, directories: Sequence[str]) -> str | None:
    """The longest of ``directories`` (or files) that ``path`` is at or below."""
    below = [directory for directory in directories if is_below(path, directory)]
    return max(below, key=len) if below else None


class CodeFilter:
    """Answers "is this file code under test?" for a set of roots, cached per file name.

    A file is under test when it is below a root, is not the tooling's, and no excluded
    directory (the standard library, site-packages) is more specific than its root: a project
    package installed in site-packages (tox's way) is under test, a virtual environment inside
    the project is not."""

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
        if is_tooling_file(path):
            return False  # pytest, pluggy, this plugin: never, even below a root
        root = _deepest(path, self.roots)
        if root is None:
            return False
        if INSTALLED_DIR_NAMES.intersection(Path(path[len(root) :]).parts):
            return False  # a virtual environment inside the project, below the root
        excluded = _deepest(path, self.excluded)
        return excluded is None or len(root) > len(excluded)  # the more specific one wins


@functools.lru_cache(maxsize=64)
def filter_for(roots: tuple[str, ...]) -> CodeFilter:
    """The one filter of these roots: the perturbation, the scheduler, the lock window and
    every origin of a test share it (and its cache)."""
    return CodeFilter([Path(root) for root in roots])


_JUDGES: list[CodeFilter] = []
"""The code under test of the test running now, innermost last (pushed by the main thread)."""
_SESSION_ROOTS: list[Callable[[], Sequence[Path]]] = []


@contextlib.contextmanager
def judged_by(code_filter: CodeFilter) -> Iterator[CodeFilter]:
    """While the block runs, :func:`is_user_file` answers by ``code_filter``."""
    _JUDGES.append(code_filter)
    try:
        yield code_filter
    finally:
        _JUDGES.remove(code_filter)


def use_session_roots(provider: Callable[[], Sequence[Path]]) -> None:
    """Between tests, :func:`is_user_file` answers by the session's roots, read from
    ``provider`` when first asked (a session inside a session, as pytester runs it, goes on
    top until :func:`forget_session_roots`)."""
    _SESSION_ROOTS.append(provider)
    _session_filter.cache_clear()


def forget_session_roots(provider: Callable[[], Sequence[Path]]) -> None:
    """The session that gave ``provider`` ended: the one beneath it answers again."""
    if provider in _SESSION_ROOTS:
        _SESSION_ROOTS.remove(provider)
    _session_filter.cache_clear()


@functools.lru_cache(maxsize=1)
def _session_filter() -> CodeFilter | None:
    if not _SESSION_ROOTS:
        return None
    try:
        roots = _SESSION_ROOTS[-1]()
    except Exception:  # a package that cannot be found: the session reports it itself
        return None
    return filter_for(tuple(str(root) for root in roots))


def current_filter() -> CodeFilter | None:
    """The code under test now: the running test's, else the session's, else None."""
    return _JUDGES[-1] if _JUDGES else _session_filter()


def is_user_file(filename: str) -> bool:
    """A file of the user's code under test: where a failure's origin, a crash, a lock's site,
    a hang stack or a scaling wait site may point, and where the perturbation acts.

    By the code under test of the running test or the session (:func:`current_filter`): the
    project's code wherever installed and the named packages count, an unnamed third-party
    library does not (a failure inside it points at the user's line that called it). Without
    one, the plain rule (:func:`is_outside_tooling`)."""
    judge = current_filter()
    if judge is None:
        return is_outside_tooling(filename)
    return judge.is_user_file(filename)


def first_user_frame(filenames: Sequence[str]) -> int | None:
    """The index of the first of ``filenames`` (outermost first) that is the user's code."""
    return next((index for index, name in enumerate(filenames) if is_user_file(name)), None)
