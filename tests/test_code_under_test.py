"""The project's own code counts wherever it is installed, and named packages count too
(issue 15).

The project is built into a real wheel and installed by pip, non-editable, into a
``site-packages`` folder inside the project (where tox puts its environments): its frames are
installed code, which the perturbation used to leave alone (the race below was found 0 times in
10). No configuration: the distribution's name comes from ``pyproject.toml``.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

INVENTORY = """
import threading


class Stock:
    def __init__(self, count):
        self.count = count

    def take(self, n):
        self.count -= n  # read, subtract, write back: a lost update


class LockedStock(Stock):
    def __init__(self, count):
        super().__init__(count)
        self._lock = threading.Lock()

    def take(self, n):
        with self._lock:
            self.count -= n
"""

TESTS = """
import pytest
import inventory


@pytest.mark.concurrent(workers=4)
def test_stock(concurrency):
    stock = SHARED[concurrency.run]
    for _ in range(50):
        stock.take(1)
    concurrency.barrier()
    assert stock.count == 1000 - 4 * 50


@pytest.mark.concurrent(workers=4)
def test_locked_stock(concurrency):
    stock = LOCKED[concurrency.run]
    for _ in range(50):
        stock.take(1)
    concurrency.barrier()
    assert stock.count == 1000 - 4 * 50


SHARED = [inventory.Stock(1000) for _ in range(100)]
LOCKED = [inventory.LockedStock(1000) for _ in range(100)]
"""


PIP_INSTALL = (sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index")


def build_wheel(directory: Path, name: str, source: str, package: str | None = None) -> Path:
    """A real wheel of a one-package distribution (no build backend needed); ``package`` is
    its import path ("acme/inventory" for a namespace package), the name by default."""
    dist = name.replace("-", "_")
    wheel = directory / f"{dist}-0.1-py3-none-any.whl"
    info = f"{dist}-0.1.dist-info"
    package = package or name
    files = {
        f"{package}/__init__.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{info}/RECORD", record)
    return wheel


def install(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    package: str = "",
    source: str = INVENTORY,
) -> Path:
    """pip installs the wheel, non-editable, into .tox/py/lib/site-packages of the project."""
    site = pytester.path / ".tox" / "py" / "lib" / "site-packages"
    wheel = build_wheel(pytester.path, name, source, package or None)
    subprocess.run(
        [*PIP_INSTALL, "--target", str(site), str(wheel)],
        check=True,
        timeout=120,
    )
    monkeypatch.setenv("PYTHONPATH", str(site))
    return site / (package or name)


def test_the_projects_installed_package_is_under_test_with_no_configuration(
    pytester: pytest.Pytester, run_subprocess, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makefile(".toml", pyproject='[project]\nname = "inventory"\nversion = "0.1"\n')
    installed = install(pytester, monkeypatch, "inventory")
    pytester.makepyfile(test_inventory=TESTS)
    # the perturbation's finding (the data-race watch, which tracks only code under test too,
    # may report run 0 before the count broke)
    result = run_subprocess("-p", "no:randomly", "--concurrency-data-races=off", timeout=300)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            f"concurrency: code under test: {pytester.path}, inventory (installed at "
            f"{installed.resolve()})",
            "* in run * of 100 (4 threads, *): * calls failed",
            "FAILED test_inventory.py::test_stock - *",
        ]
    )


def test_a_named_package_is_under_test_and_none_turns_the_automatic_part_off(
    pytester: pytest.Pytester, run_subprocess, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makefile(".toml", pyproject='[project]\nname = "inventory"\nversion = "0.1"\n')
    install(pytester, monkeypatch, "inventory")
    pytester.makepyfile(test_inventory=TESTS)
    off = run_subprocess("-p", "no:randomly", "--concurrency-packages=none", "-k", "test_stock")
    off.stdout.fnmatch_lines([f"concurrency: code under test: {pytester.path}"])
    named = run_subprocess(
        "-p", "no:randomly", "--concurrency-packages=none,inventory", "-k", "test_stock"
    )
    named.assert_outcomes(failed=1)
    named.stdout.fnmatch_lines(["concurrency: code under test: *, inventory (installed at *)"])


def test_a_package_that_cannot_be_imported_is_a_usage_error(
    pytester: pytest.Pytester, run_subprocess, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=2, runs=2, packages="no_such_thing")
        def test_marked():
            pass
        """
    )
    result = run_subprocess("--concurrency-packages=cachetools_not_here")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*invalid --concurrency-packages=cachetools_not_here: no package or module named "
            "'cachetools_not_here' can be imported here*"
        ]
    )
    monkeypatch.setenv("PYTEST_CONCURRENCY_PACKAGES", "also_missing")
    result = run_subprocess()
    result.stderr.fnmatch_lines(["*environment variable PYTEST_CONCURRENCY_PACKAGES=also_missing*"])
    monkeypatch.delenv("PYTEST_CONCURRENCY_PACKAGES")
    marked = run_subprocess()
    marked.assert_outcomes(errors=1)
    marked.stdout.fnmatch_lines(["*packages= in @pytest.mark.concurrent on *'no_such_thing'*"])


def test_a_namespace_package_of_the_project_is_under_test(
    pytester: pytest.Pytester, run_subprocess, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makefile(".toml", pyproject='[project]\nname = "acme-inventory"\nversion = "0.1"\n')
    installed = install(pytester, monkeypatch, "acme-inventory", "acme/inventory")
    pytester.makepyfile(
        test_inventory=TESTS.replace("import inventory", "from acme import inventory")
    )
    result = run_subprocess("-p", "no:randomly", "-k", "test_stock", timeout=300)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"concurrency: code under test: *, acme.inventory (installed at {installed.resolve()})"]
    )


def test_naming_a_package_never_imports_it(pytester: pytest.Pytester, run_subprocess) -> None:
    pytester.mkpydir("badpkg").joinpath("__init__.py").write_text(
        "raise RuntimeError('import-time failure in badpkg')\n"
    )
    pytester.makepyfile("def test_nothing(): pass")
    found = run_subprocess("--concurrency-packages=badpkg")  # found, not imported
    found.assert_outcomes(passed=1)
    found.stdout.fnmatch_lines(["concurrency: code under test: *, badpkg*"])
    missing = run_subprocess("--concurrency-packages=badpkg.sub")  # needs no import either
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*no package or module named 'badpkg.sub'*"])
    assert "INTERNALERROR" not in missing.stdout.str() + missing.stderr.str()


THIRDLIB = (
    "# a third-party library\n" * 20
    + """
import threading


def check(value):
    if value < 0:
        raise ValueError("negative")


def pair():
    return threading.Lock(), threading.Lock()


def take_in_order(first, second):
    with first:
        with second:
            pass
"""
)
RAISING_LINE = 27

USES_THIRDLIB = """
import pytest
import thirdlib


@pytest.mark.concurrent(workers=2, runs=1)
def test_threads():
    thirdlib.check(-1)


@pytest.mark.concurrent(workers=2, runs=1, mode="processes")
def test_processes():
    thirdlib.check(-1)


@pytest.mark.concurrent(workers=2, runs=1, mode="asyncio")
async def test_asyncio():
    thirdlib.check(-1)


@pytest.mark.concurrent(workers=2, runs=1)
def test_lock_order(concurrency):
    first, second = thirdlib.pair()
    if concurrency.worker == 0:
        thirdlib.take_in_order(first, second)
        thirdlib.take_in_order(second, first)
"""


def test_every_part_asks_the_same_question_of_an_installed_library(
    pytester: pytest.Pytester, run_subprocess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A third-party library, installed and not named, is not code under test: a failure
    inside it points at the test's line that called it, in every mode, and the order of its
    own locks is its business. Named, the same library is code under test for every part at
    once: origins point inside it and its lock-order inversion is reported."""
    from pytest_concurrency import messages

    install(pytester, monkeypatch, "thirdlib", source=THIRDLIB)
    pytester.makepyfile(test_lib=USES_THIRDLIB)
    inversion = messages.INVERSION_HEADLINE.split("{locks}")[1].split(";")[0]

    unnamed = run_subprocess("-p", "no:randomly")
    unnamed.assert_outcomes(failed=3, passed=1)
    for mode in ("threads", "processes", "asyncio"):
        unnamed.stdout.fnmatch_lines([f"*test_{mode}*", "*ValueError at test_lib.py:*"])
    origins = [line for line in unnamed.stdout.lines if "ValueError at " in line]
    assert origins and all("ValueError at test_lib.py:" in line for line in origins)
    assert inversion not in unnamed.stdout.str()

    named = run_subprocess("-p", "no:randomly", "--concurrency-packages=thirdlib")
    named.assert_outcomes(failed=4)  # the inversion fails its test by default
    origins = [line.replace("\\", "/") for line in named.stdout.lines if "ValueError at " in line]
    assert len(origins) >= 6  # the failure and the summary, of each mode
    assert all(f"thirdlib/__init__.py:{RAISING_LINE}" in line for line in origins)
    assert inversion in named.stdout.str()
