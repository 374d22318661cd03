"""The cost of naming a library as code under test, on a test that runs a lot of it (issue 15).

A named package's code is perturbed like the project's own: on 3.10/3.11 every opcode it runs
in a worker pays a ``sys.settrace`` opcode event, and each shared-state instruction is a
decision point (a chance to give way), up to ``MAX_POINTS_PER_CALL`` points and
``MAX_SLEEP_PER_CALL`` of sleep per call. A locked ``sortedcontainers.SortedList`` twin whose
invariant check walks the whole list through the library (``values[i]`` for every ``i``,
``value in values`` and ``values.index(value)`` for every value: about 800 library calls per
check of 200 values) is timed with and without ``--concurrency-packages=sortedcontainers``, in
three shapes of the same test (4 workers, 100 runs, 50 locked adds per worker and run):

* **every worker checks** after the barrier (the body form as a user writes it first);
* **worker 0 checks** after the barrier, the others wait at a second barrier;
* **harness**: ``for run in concurrency.runs(): run(add_mine, workers=4)`` and the check in the
  test's own thread after ``run()`` returns: the perturbation acts in the workers only.

Each arm is one pytest session of one test (``-p no:cacheprovider``, seed fixed per repetition),
the arms interleaved (the order reversed every other repetition); the figure is the test's call
time (junit, call phase) and the session's wall time, medians over ``--repetitions``, and the
named / not-named ratio paired per repetition. Every repetition also runs the buggy twins of the
three shapes (no lock around ``add``) named, to show that the cheaper shapes still find the race.

    python benchmarks/named_package_cost.py                  # 7 repetitions
    python benchmarks/named_package_cost.py --repetitions 2  # smoke run
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import now_line  # noqa: E402
from detection import run_pytest  # noqa: E402

LIBRARY = "sortedcontainers"
NAMED = f"--concurrency-packages={LIBRARY}"
COMMON = ("-p", "no:run-parallel", "-o", "junit_duration_report=call")

TESTS = '''\
"""A SortedList shared by four workers; the check walks the whole list through the library."""

import threading

import pytest
from sortedcontainers import SortedList

ADDS = 50
WORKERS = 4


class Index:
    def __init__(self, locked):
        self.values = SortedList()
        self._lock = threading.Lock() if locked else None

    def add(self, value):
        if self._lock is None:
            self.values.add(value)
        else:
            with self._lock:
                self.values.add(value)


def add_mine(index, worker):
    for n in range(ADDS):
        index.add(n * WORKERS + worker)


def check(values):
    """The library-heavy invariant check: every position, every membership, every index."""
    assert len(values) == ADDS * WORKERS, f"len {len(values)}"
    assert all(values[i] <= values[i + 1] for i in range(len(values) - 1)), "out of order"
    assert all(value in values for value in list(values)), "a value not found"
    assert [values.index(value) for value in list(values)] == list(range(len(values)))


SHARED = {}


def body(concurrency, locked, every_worker):
    index = SHARED.setdefault((locked, every_worker), [Index(locked)])
    add_mine(index[0], concurrency.worker)
    concurrency.barrier()  # every worker of this run has added
    if every_worker or concurrency.worker == 0:
        check(index[0].values)
    concurrency.barrier()  # every check is done
    if concurrency.worker == 0:
        index[0] = Index(locked)


def harness(concurrency, locked):
    for run in concurrency.runs():
        index = Index(locked)
        run(lambda: add_mine(index, concurrency.worker), workers=WORKERS)
        check(index.values)


@pytest.mark.concurrent(workers=WORKERS)
def test_every_worker_checks(concurrency):
    body(concurrency, True, True)


@pytest.mark.concurrent(workers=WORKERS)
def test_worker_0_checks(concurrency):
    body(concurrency, True, False)


def test_harness(concurrency):
    harness(concurrency, True)


@pytest.mark.concurrent(workers=WORKERS)
def test_every_worker_checks_buggy(concurrency):
    body(concurrency, False, True)


@pytest.mark.concurrent(workers=WORKERS)
def test_worker_0_checks_buggy(concurrency):
    body(concurrency, False, False)


def test_harness_buggy(concurrency):
    harness(concurrency, False)
'''

SHAPES = (
    ("every worker checks", "test_heavy.py::test_every_worker_checks"),
    ("worker 0 checks", "test_heavy.py::test_worker_0_checks"),
    ("harness: the check after `run()`", "test_heavy.py::test_harness"),
)
ARMS = (("not named", ()), ("named", (NAMED,)))


def quartiles(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    low, _, high = statistics.quantiles(values, n=4)
    return f"{low:.2f}-{high:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--python", default=sys.executable)
    options = parser.parse_args(argv)
    begin, started = now_line(), time.perf_counter()
    calls: dict[tuple[str, str], list[float]] = {}
    walls: dict[tuple[str, str], list[float]] = {}
    found = {title: 0 for title, _ in SHAPES}
    with tempfile.TemporaryDirectory(prefix="named-cost-") as scratch:
        root = Path(scratch)
        (root / "pytest.ini").write_text("[pytest]\n")
        (root / "test_heavy.py").write_text(TESTS)
        runs = [(title, nodeid, arm, args) for title, nodeid in SHAPES for arm, args in ARMS]
        for repetition in range(options.repetitions):
            seed = f"--concurrency-seed={repetition + 1}"
            order = runs if repetition % 2 == 0 else list(reversed(runs))
            for title, nodeid, arm, args in order:
                session = run_pytest(options.python, [nodeid], [*COMMON, *args, seed], cwd=root)
                result = session.results.get(nodeid)
                if result is None or result.failed or result.seconds is None:
                    raise SystemExit(f"{nodeid} ({arm}) failed: a twin must pass")
                calls.setdefault((title, arm), []).append(result.seconds)
                walls.setdefault((title, arm), []).append(session.wall)
                print(f"  {repetition + 1} {title}, {arm}: {result.seconds:.2f}s", file=sys.stderr)
            buggy = [f"{nodeid}_buggy" for _, nodeid in SHAPES]
            session = run_pytest(options.python, buggy, [*COMMON, NAMED, seed], cwd=root)
            for (title, _), nodeid in zip(SHAPES, buggy, strict=True):
                result = session.results.get(nodeid)
                found[title] += bool(result is not None and result.failed)
    lines = [
        f"Started {begin}; ended {now_line()}; {time.perf_counter() - started:.0f} s in all. "
        f"{LIBRARY} {importlib.metadata.version(LIBRARY)}, Python {sys.version.split()[0]}.",
        "",
        "| shape of the test | not named: call s, median (p25-p75) | named: call s, median "
        "(p25-p75) | named / not named, paired | session wall s, not named / named | buggy "
        "twin found, named |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for title, _ in SHAPES:
        plain, named = calls[(title, "not named")], calls[(title, "named")]
        ratio = statistics.median(b / a for a, b in zip(plain, named, strict=True))
        lines.append(
            f"| {title} | {statistics.median(plain):.2f} ({quartiles(plain)}) "
            f"| {statistics.median(named):.2f} ({quartiles(named)}) | {ratio:.1f}x "
            f"| {statistics.median(walls[(title, 'not named')]):.2f} / "
            f"{statistics.median(walls[(title, 'named')]):.2f} "
            f"| {found[title]}/{options.repetitions} |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
