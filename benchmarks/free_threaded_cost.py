"""Per-run cost of the harness and the marker form with the GIL off and on, one build (issue 16).

On a free-threaded build, run it as is: every arm runs twice per repetition, once with
``PYTHON_GIL=0`` and once with ``PYTHON_GIL=1``, interleaved, so the ratio "GIL off / GIL on"
compares the same interpreter, the same machine and the same moment. On a GIL build both
settings run with the GIL (``PYTHON_GIL`` means nothing there): a control whose ratio is 1.

Two forms, 4 workers, the plugin's defaults (schedule perturbation on, lock-order tracking on):

* harness: ``for run in concurrency.runs(R): c = Counter(); run(c.incr, workers=4);
  assert c.n == 4`` (the fixed counter of a harness suite, a lock around ``+= 1``);
* marker: ``@pytest.mark.concurrent(workers=4, runs=R)`` on a body that calls the same
  ``incr`` of a shared counter.

Each arm is a ``python -m pytest`` subprocess on a generated file holding both tests for R runs
and for 1 run; the call phase of each test is read from its JUnit XML (call time only), and the
per-run cost is ``(T(R) - T(1)) / (R - 1)``, so thread start-up and pytest's work cancel out.
The table gives the median over repetitions, the range, and the ratio of the medians (a paired
ratio would divide by a difference that noise can bring near zero on a loaded machine).

``--source DIR`` puts DIR first on the subprocesses' ``PYTHONPATH``: the same figures for
another checkout (e.g. the code before the change), with the interpreter and packages of this
one.

    python benchmarks/free_threaded_cost.py                 # 7 repetitions, about a minute
    python benchmarks/free_threaded_cost.py --quick         # 2 repetitions, smaller R
    python benchmarks/free_threaded_cost.py --source /path/to/an/older/checkout
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

from bench_common import cpu_model

WORKERS = 4
SEED = 1
GIL_SETTINGS = ("0", "1")
TESTS = """\
import threading

import pytest


class Counter:
    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def incr(self):
        with self.lock:
            self.n += 1


SHARED = Counter()


def test_harness(concurrency):
    for run in concurrency.runs({runs}):
        counter = Counter()
        run(counter.incr, workers={workers})
        assert counter.n == {workers}


@pytest.mark.concurrent(workers={workers}, runs={runs})
def test_marker():
    SHARED.incr()
"""
FORMS = ("harness", "marker")


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"free_threaded_cost: {message}")


def call_times(directory: Path, runs: int, gil: str, source: str | None) -> dict[str, float]:
    """One pytest subprocess on the file of ``runs`` runs: each form's call phase, seconds."""
    path = directory / f"test_cost_r{runs}.py"
    if not path.exists():
        path.write_text(TESTS.format(workers=WORKERS, runs=runs))
    junit = directory / f"junit_r{runs}_gil{gil}.xml"
    env = {**os.environ, "PYTHON_GIL": gil}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(path),
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-p",
        "no:xdist",
        "-p",
        "no:cov",
        f"--concurrency-seed={SEED}",
        f"--junitxml={junit}",
        "-o",
        "junit_duration_report=call",
        "-o",
        "junit_family=xunit2",
    ]
    done = subprocess.run(
        command, cwd=directory, env=env, capture_output=True, text=True, check=False
    )
    check(done.returncode == 0, f"pytest exited {done.returncode}:\n{done.stdout}{done.stderr}")
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    return {
        case.get("name", "").removeprefix("test_"): float(case.get("time", 0)) for case in cases
    }


@dataclass
class Arm:
    gil: str
    per_run: dict[str, list[float]] = field(default_factory=lambda: {f: [] for f in FORMS})

    def repeat(self, directory: Path, runs: int, source: str | None) -> None:
        many = call_times(directory, runs, self.gil, source)
        one = call_times(directory, 1, self.gil, source)
        for form in FORMS:
            self.per_run[form].append((many[form] - one[form]) / (runs - 1))


def plugin_location(source: str | None) -> str:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = source
    code = "import pytest_concurrency, os; print(os.path.dirname(pytest_concurrency.__file__))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--reps", type=int, help="repetitions (default 7, quick 2)")
    parser.add_argument("--runs", type=int, help="R (default 200, quick 50)")
    parser.add_argument("--source", help="a checkout to measure instead of the installed code")
    args = parser.parse_args(argv)
    reps = args.reps or (2 if args.quick else 7)
    runs = args.runs or (50 if args.quick else 200)
    check(reps >= 1 and runs >= 2, "need reps >= 1 and runs >= 2")
    arms = [Arm(gil) for gil in GIL_SETTINGS]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="free-threaded-cost-") as tmp:
        directory = Path(tmp)
        (directory / "pytest.ini").write_text("[pytest]\n")
        for rep in range(reps):
            for arm in arms if rep % 2 == 0 else arms[::-1]:
                arm.repeat(directory, runs, args.source)
            print(f"  repetition {rep + 1}/{reps}", file=sys.stderr, flush=True)
    total = time.perf_counter() - started
    build = "free-threaded" if sysconfig.get_config_var("Py_GIL_DISABLED") else "GIL"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"machine: {os.cpu_count()} CPUs online, usable {len(os.sched_getaffinity(0))}; "
        f"{cpu_model()}; Python {platform.python_version()} ({build} build); load {load}"
    )
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print(f"plugin: {plugin_location(args.source)}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {reps} repetitions; {total:.0f}s in all")
    print(f"per run = (T(R) - T(1)) / (R - 1) of the call phase, R = {runs}, {WORKERS} workers")
    print()
    print(
        "| form | ms per run, PYTHON_GIL=0: median (min-max) | PYTHON_GIL=1: median (min-max) "
        "| ratio of medians, 0/1 |"
    )
    print("|---|---:|---:|---:|")
    off, on = arms
    for form in FORMS:
        a, b = off.per_run[form], on.per_run[form]
        print(
            f"| {form} | {spread(a)} | {spread(b)} | "
            f"{statistics.median(a) / statistics.median(b):.2f} |"
        )
    return 0


def spread(values: list[float]) -> str:
    return f"{ms(statistics.median(values))} ({ms(min(values))}-{ms(max(values))})"


if __name__ == "__main__":
    sys.exit(main())
