"""Races in a package installed non-editable, tox's way (issue 15): found with no configuration?

The script writes a small project, ``inventory`` (``src/`` layout, setuptools), whose own
modules hold two races, each with a locked twin:

* a lost update, ``self.stock -= n`` in ``Stock.take`` (no call between the read and the
  write, so only a give-way inside the package shows it on a GIL build);
* a lazy singleton, ``Catalog.get()`` checking ``cls._instance is None`` then constructing.

It makes a virtual environment as tox does (``python -m venv``; ``pip install`` of this plugin
from its working tree, pytest and pytest-run-parallel, then ``pip install <project>``: all
non-editable, so ``inventory`` is imported from the venv's ``site-packages``), writes tests in
the project's ``tests/`` folder that import the installed package, and runs
``<venv>/bin/python -m pytest tests`` from the project's folder, ``--repetitions`` times per
arm, arms interleaved:

* **defaults**: ``@pytest.mark.concurrent(workers=4)``, 100 runs, a new seed every session, no
  configuration of the plugin at all;
* **``--concurrency-packages=none``**: the automatic part off, which leaves the installed
  package out, as the plugin did before issue 15 (only the rootdir and the test's folder);
* **perturbation off** (``--concurrency-perturb=false``): our runner's threads alone;
* **pytest-run-parallel**, ``--parallel-threads=4 --iterations=100`` (as many calls per thread
  as our default runs), through ``benchmarks/run_parallel_shim.py``.

Every session also passes ``-p no:cacheprovider`` (as ``detection.py`` does), so that the
failing-seed memory cannot replay one session's failure in the next: the sessions are
independent. A race is *found* when its test fails; a twin that fails is a false alarm.

    python benchmarks/installed_races.py                  # 20 sessions per arm
    python benchmarks/installed_races.py --repetitions 3  # smoke run
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import Arm, Case, found_counts, found_table, now_line, run_parallel_arm  # noqa: E402

WORKTREE = HERE.parent
WORKERS = 4

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "inventory"
version = "0.1.0"
requires-python = ">=3.10"
"""

INIT = '''\
"""A small inventory: stock counts and a lazily built catalog."""

from inventory.catalog import Catalog, LockedCatalog
from inventory.stock import LockedStock, Stock

__all__ = ["Catalog", "LockedCatalog", "LockedStock", "Stock"]
'''

STOCK = '''\
"""Stock counts: ``take`` is a lost update unless it holds the lock."""

import threading


class Stock:
    def __init__(self, stock):
        self.stock = stock

    def take(self, n):
        self.stock -= n  # read, subtract, write back


class LockedStock(Stock):
    def __init__(self, stock):
        super().__init__(stock)
        self._lock = threading.Lock()

    def take(self, n):
        with self._lock:
            self.stock -= n
'''

CATALOG = '''\
"""The catalog is built on first use: a lazy singleton, checked then set."""

import threading


class Catalog:
    _instance = None

    def __init__(self):
        self.items = {}

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @classmethod
    def reset(cls):
        cls._instance = None


class LockedCatalog(Catalog):
    _instance = None
    _lock = threading.Lock()

    @classmethod
    def get(cls):
        if cls._instance is None:
            with cls._lock:
                if cls._instance is None:
                    cls._instance = cls()
        return cls._instance
'''

TESTS = f'''\
"""The installed package's shared use, checked in threads (plain tests: a failure is a find)."""

import pytest

import inventory

TAKES = 10
START = 1_000_000


def take_and_check(stock, concurrency):
    for _ in range(TAKES):
        stock.take(1)
    concurrency.barrier()  # every worker of this run has taken its share
    expected = START - (concurrency.run + 1) * concurrency.workers * TAKES
    assert stock.stock == expected, f"{{stock.stock - expected}} units taken but still in stock"


STOCK = inventory.Stock(START)
LOCKED_STOCK = inventory.LockedStock(START)


@pytest.mark.concurrent(workers={WORKERS})
def test_stock(concurrency):
    take_and_check(STOCK, concurrency)


@pytest.mark.concurrent(workers={WORKERS})
def test_locked_stock(concurrency):
    take_and_check(LOCKED_STOCK, concurrency)


def get_and_check(catalog, concurrency):
    mine = catalog.get()
    concurrency.barrier()  # every worker of this run has its catalog
    assert mine is catalog.get(), "two catalogs"
    concurrency.barrier()  # every worker has checked
    if concurrency.worker == 0:
        catalog.reset()


@pytest.mark.concurrent(workers={WORKERS})
def test_catalog(concurrency):
    get_and_check(inventory.Catalog, concurrency)


@pytest.mark.concurrent(workers={WORKERS})
def test_locked_catalog(concurrency):
    get_and_check(inventory.LockedCatalog, concurrency)
'''

CASES = (
    Case(
        "lost update `self.stock -= n`",
        "tests/test_inventory.py::test_stock",
        "tests/test_inventory.py::test_locked_stock",
    ),
    Case(
        "lazy singleton `Catalog.get()`",
        "tests/test_inventory.py::test_catalog",
        "tests/test_inventory.py::test_locked_catalog",
    ),
)
OURS = ("-p", "no:run-parallel")
ARMS = (
    Arm("defaults", OURS),
    Arm("`--concurrency-packages=none` (before)", (*OURS, "--concurrency-packages=none")),
    Arm("perturbation off", (*OURS, "--concurrency-perturb=false")),
    run_parallel_arm(WORKERS),
)
COMMON = ("-o", "junit_duration_report=call")


def write_project(root: Path) -> Path:
    project = root / "inventory-project"
    package = project / "src" / "inventory"
    package.mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text(INIT)
    (package / "stock.py").write_text(STOCK)
    (package / "catalog.py").write_text(CATALOG)
    (project / "tests" / "test_inventory.py").write_text(TESTS)
    return project


def pip(python: Path, *args: str) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        check=True, timeout=900, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def make_venv(root: Path, project: Path) -> Path:
    """tox's way: a venv, the tools installed into it, then the project, all non-editable."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pip(python, str(WORKTREE), "pytest", "pytest-run-parallel")
    pip(python, str(project))
    return python


def describe_setup(python: Path, project: Path) -> list[str]:
    """Where ``inventory`` and the plugin are imported from, and the header's line."""
    where = subprocess.run(
        [str(python), "-c", "import inventory, pytest_concurrency as p; "
         "print(inventory.__file__); print(p.__file__)"],
        cwd=project, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    header = subprocess.run(
        [str(python), "-m", "pytest", "tests", "-p", "no:cacheprovider", "-p", "no:run-parallel",
         "-k", "locked_stock"],
        cwd=project, capture_output=True, text=True, check=False, timeout=300,
    ).stdout  # fmt: skip
    line = next((x for x in header.splitlines() if "code under test" in x), "(no header line)")
    return [f"inventory imported from {where[0]}", f"plugin imported from {where[1]}", line]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the project and its venv")
    options = parser.parse_args(argv)
    started = time.perf_counter()
    begin = now_line()
    root = Path(tempfile.mkdtemp(prefix="installed-races-"))
    try:
        project = write_project(root)
        python = make_venv(root, project)
        setup = describe_setup(python, project)
        print("\n".join(setup), file=sys.stderr)
        built = time.perf_counter() - started
        counts = found_counts(str(python), project, CASES, ARMS, options.repetitions, COMMON)
    finally:
        if options.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    lines = [
        f"Started {begin}; ended {now_line()}; venv built in {built:.0f} s, "
        f"{time.perf_counter() - started:.0f} s in all.",
        "",
        *(f"    {line}" for line in setup),
        "",
        *found_table(counts, CASES),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
