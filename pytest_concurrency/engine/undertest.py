"""What code is under test: the rootdir, the project's own packages wherever they are
installed, and the packages the user names.

tox installs the project non-editable into its environment's site-packages, where the
perturbation used to see installed code, never the user's: a race in the project's own module
was then found 0 times in 10 (issue 15). So the distribution the rootdir builds is read from its
metadata (``pyproject.toml`` ``[project].name``, ``setup.cfg``, ``setup.py``), the import
packages it installs are read from its installed distribution's metadata, and their
directories (or single modules) count as code under test wherever they live.
``--concurrency-packages`` adds import packages by name (a third-party library whose shared use
a test checks, or a standard-library module); ``none`` turns the automatic part off.

The answer is a list of *roots*: paths whose files are the user's. A root below an excluded
directory (site-packages, the standard library) wins over it, since it is more specific: see
:class:`pytest_concurrency.engine.owncode.CodeFilter`. Pure module: no pytest import.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_concurrency import messages
from pytest_concurrency.engine import owncode

NONE = "none"
SETUP_PY_NAME = re.compile(r"""\bname\s*=\s*["']([A-Za-z0-9._-]+)["']""")


@dataclass(frozen=True)
class Package:
    """An import package (or single module) counted as code under test, and where it is."""

    name: str
    location: str  # its directory, with no trailing separator, or its single file
    automatic: bool  # found from the project's metadata, not named by the user

    def describe(self, rootdir: Path) -> str:
        installed = owncode.INSTALLED_DIR_NAMES.intersection(Path(self.location).parts)
        if owncode.is_below(self.location, str(rootdir)) and not installed:
            return self.name
        return messages.INSTALLED_AT.format(name=self.name, location=self.location)


class UnknownPackage(ValueError):
    """A name given to ``--concurrency-packages`` that no import finds."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def packages_under_test(rootdir: Path, names: Sequence[str] = ()) -> list[Package]:
    """The project's own import packages (unless ``names`` holds ``none``) and the named ones.

    Raises :class:`UnknownPackage` for a named package that cannot be found."""
    automatic = NONE not in (name.lower() for name in names)
    found: dict[str, Package] = {}
    if automatic:
        for name in project_import_names(rootdir):
            location = owncode.module_location(name)
            if location is not None and not _is_tooling(location):
                found.setdefault(name, Package(name, location.rstrip(os.sep), True))
    for name in names:
        if name.lower() == NONE:
            continue
        location = owncode.module_location(name)
        if location is None:
            raise UnknownPackage(name)
        found[name] = Package(name, location.rstrip(os.sep), False)
    return list(found.values())


def project_import_names(rootdir: Path) -> list[str]:
    """The top-level import names that the distribution built from ``rootdir`` installs, from
    its installed metadata (``top_level.txt`` and its list of files); none if not installed."""
    distribution = project_name(rootdir)
    if distribution is None:
        return []
    try:
        installed = importlib.metadata.distribution(distribution)
        files = installed.files or ()
        top_level = installed.read_text("top_level.txt") or ""
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError):
        return []
    paths = {"/".join(file.parts) for file in files}
    names = {line.strip() for line in top_level.splitlines()}
    names.update(import_name(file.parts, paths) for file in files)
    return sorted(
        name
        for name in names
        if name and all(part.isidentifier() for part in name.split(".")) and "__" not in name
    )


def import_name(parts: Sequence[str], paths: Collection[str]) -> str:
    """The import name a file of a distribution belongs to ("" for metadata, scripts, .pth):
    its top-level package, or for a namespace package (no ``__init__.py`` of the
    distribution's there) the package below it ("acme.inventory")."""
    if not parts or parts[0] in ("..", "__pycache__"):
        return ""
    first = parts[0]
    if first.endswith((".dist-info", ".egg-info", ".data", ".pth")):
        return ""
    if len(parts) > 2 and f"{first}/__init__.py" not in paths:
        return f"{first}.{parts[1]}"
    if len(parts) > 1:
        return first
    if first.endswith(".py"):
        return first[: -len(".py")]
    if first.endswith((".so", ".pyd")):
        return first.split(".")[0]
    return ""


def project_name(rootdir: Path) -> str | None:
    """The distribution name that ``rootdir`` builds: pyproject (``[project]``, or Poetry's
    ``[tool.poetry]``), setup.cfg, then setup.py."""
    for reader in (_pyproject_name, _setup_cfg_name, _setup_py_name):
        name = reader(rootdir)
        if name:
            return name
    return None


def _pyproject_name(rootdir: Path) -> str | None:
    path = rootdir / "pyproject.toml"
    if not path.is_file():
        return None
    try:  # Python 3.10 has no tomllib: pytest depends on tomli there
        tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    except ImportError:
        return None
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    poetry = document.get("tool", {}).get("poetry") if isinstance(document, dict) else None
    for table in (document.get("project"), poetry):
        name = table.get("name") if isinstance(table, dict) else None
        if isinstance(name, str):
            return name
    return None


def _setup_cfg_name(rootdir: Path) -> str | None:
    path = rootdir / "setup.cfg"
    if not path.is_file():
        return None
    import configparser  # only for a project with a setup.cfg

    parser = configparser.ConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (OSError, configparser.Error):
        return None
    return parser.get("metadata", "name", fallback=None) or None


def _setup_py_name(rootdir: Path) -> str | None:
    path = rootdir / "setup.py"
    if not path.is_file():
        return None
    try:
        found = SETUP_PY_NAME.search(path.read_text(encoding="utf-8"))
    except OSError:
        return None
    return found.group(1) if found else None


def describe(rootdir: Path, packages: Iterable[Package]) -> str:
    """ "<rootdir>, inventory (installed at .../inventory), cachetools": the header's words."""
    return ", ".join([str(rootdir), *(package.describe(rootdir) for package in packages)])


def _is_tooling(location: str) -> bool:
    """pytest's, pluggy's or this plugin's own directory (never under test, even here)."""
    inside = os.path.join(location, "__init__.py") if os.path.isdir(location) else location
    return owncode.is_tooling_file(inside)
