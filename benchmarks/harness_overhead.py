"""The harness's own cost per run, side by side with hand-written barrier loops.

Two forms, 8 worker threads, an empty body, schedule perturbation off:

* marker form: ``@pytest.mark.concurrent(workers=8, runs=R, perturb=False)``, compared with a
  hand-written loop of 8 persistent threads meeting at a ``threading.Barrier(8)`` each run;
* explicit harness: ``for run in concurrency.runs(R): run(fn, workers=8)``, where the
  controlling thread takes part in every run, compared with a hand-written loop in which the
  main thread and 8 persistent threads meet at a ``threading.Barrier(9)`` twice per run.

Our code is driven three ways: through pytest itself (``pytest.main`` in this process on a
generated test file), through the ``concurrency`` fixture's object without pytest, and through
``ThreadRunner`` + ``run_series`` directly. Every arm is timed for R runs and for 1 run, and the
per-run cost is ``(T(R) - T(1)) / (R - 1)``: thread start-up, pytest's collection and reporting
cancel out. All arms run in this one process, interleaved (the order reverses every repetition),
and the table gives medians over repetitions.

Through pytest, each form runs with the plugin's defaults (lock-order tracking on) and with
``--concurrency-lock-order=off``: while tracking is on, ``threading.Lock`` and
``threading.Condition`` are replaced by tracked versions during the test (the thread runner's
own gates are raw locks that are never replaced, so both should cost the same per run). Other
installed pytest plugins are disabled in these invocations (``-p no:NAME``): they cost nothing
per run, only fixed cost and noise.

The hand-written loops are timed twice: with the interpreter's default switch interval (what a
user writes) and with the 1 µs switch interval our thread runner sets during a series, so that a
difference can be told apart from the effect of the switch interval.

    python benchmarks/harness_overhead.py            # full run, about 1.5 minutes
    python benchmarks/harness_overhead.py --quick    # a few seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import io
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bench_common import cpu_model

from pytest_concurrency.driver.harness import Concurrency, HarnessConfig
from pytest_concurrency.driver.series import run_series
from pytest_concurrency.engine.outcomes import SeriesOutcome
from pytest_concurrency.runners.base import Runner, RunPlan
from pytest_concurrency.runners.threads import SWITCH_INTERVAL, ThreadRunner

WORKERS = 8
TIMEOUT = 60.0
SEED = 1
PYTEST_ARGS = (
    "-q",
    "-p",
    "no:cacheprovider",
    # pytest-run-parallel registers its entry point as "run-parallel": "no:run_parallel"
    # does not disable it.
    "-p",
    "no:run-parallel",
    "--concurrency-perturb=false",
    f"--concurrency-seed={SEED}",
)
LOCK_TRACKING_OFF = ("--concurrency-lock-order=off",)
MARKER_TEST = """\
import pytest


@pytest.mark.concurrent(workers={workers}, runs={runs}, perturb=False)
def test_empty():
    pass
"""
HARNESS_TEST = """\
def empty():
    pass


def test_harness(concurrency):
    for run in concurrency.runs({runs}):
        run(empty, workers={workers})
"""


def empty() -> None:
    pass


# -- hand-written baselines -----------------------------------------------------------------


@contextlib.contextmanager
def switch_interval(seconds: float | None) -> Iterator[None]:
    if seconds is None:
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def hand_barrier8(runs: int, interval: float | None) -> float:
    """8 persistent threads meet at a Barrier(8) before every run, then call the body."""
    barrier = threading.Barrier(WORKERS)

    def worker() -> None:
        for _ in range(runs):
            barrier.wait()
            empty()

    with switch_interval(interval):
        start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start


def hand_barrier9(runs: int, interval: float | None) -> float:
    """The main thread and 8 persistent threads meet at a Barrier(9) twice per run."""
    barrier = threading.Barrier(WORKERS + 1)
    stop = False

    def worker() -> None:
        while True:
            barrier.wait()  # the run starts
            if stop:
                return
            empty()
            barrier.wait()  # the run is over

    with switch_interval(interval):
        start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        for _ in range(runs):
            barrier.wait()
            barrier.wait()
        stop = True
        barrier.wait()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start


# -- our code, directly ---------------------------------------------------------------------


def new_outcome(runs: int | None) -> SeriesOutcome:
    return SeriesOutcome(mode="threads", workers=WORKERS, runs_planned=runs, seed=SEED)


def direct_marker(runs: int) -> float:
    """What the marker does per test: one series of ``runs`` runs on a fresh ThreadRunner."""
    start = time.perf_counter()
    runner = ThreadRunner(WORKERS)
    outcome = new_outcome(runs)
    try:
        run_series(
            runner, [empty] * WORKERS, outcome=outcome, plan=RunPlan(count=runs), timeout=TIMEOUT
        )
    finally:
        runner.close()
    elapsed = time.perf_counter() - start
    check(outcome.runs_done == runs and not outcome.failed, f"direct marker: {outcome}")
    return elapsed


def direct_harness(runs: int) -> float:
    """What each ``run(fn, workers=8)`` does underneath: a one-run series per run."""
    start = time.perf_counter()
    runner = ThreadRunner(WORKERS)
    outcome = new_outcome(runs)
    calls = [empty] * WORKERS
    try:
        for index in range(runs):
            run_series(
                runner,
                calls,
                outcome=outcome,
                timeout=TIMEOUT,
                keep_results=True,
                plan=RunPlan(count=1, first_index=index),
            )
    finally:
        runner.close()
    elapsed = time.perf_counter() - start
    check(outcome.runs_done == runs and not outcome.failed, f"direct harness: {outcome}")
    return elapsed


def thread_runner_factory(mode: str, workers: int, *rest: object) -> Runner:
    """The fixture's runner factory, (mode, workers, ...) -> runner: threads, no perturbation."""
    return ThreadRunner(workers)


def fixture_harness(runs: int) -> float:
    """The ``concurrency`` fixture's object, used as in a test body, without pytest around it."""
    config = HarnessConfig(
        mode="threads",
        workers=WORKERS,
        runs=runs,
        seed=SEED,
        timeout=TIMEOUT,
        budget=None,
        reproduce="",
        reproduce_seed=SEED,
    )
    start = time.perf_counter()
    concurrency = Concurrency(config, thread_runner_factory)
    try:
        for run in concurrency.runs(runs):
            run(empty, workers=WORKERS)
    finally:
        concurrency.close()
    elapsed = time.perf_counter() - start
    loop = concurrency.active
    check(loop is not None and loop.outcome.runs_done == runs, "fixture harness: runs missing")
    return elapsed


# -- our code, through pytest ---------------------------------------------------------------


class CallTimes:
    """A plugin that keeps the duration of each test's call phase."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.calls.append(report.duration)


@dataclass
class PytestArm:
    """``pytest.main`` in this process on a generated test file; wall time and call phase."""

    directory: Path
    template: str
    name: str
    extra: tuple[str, ...] = ()
    call_times: dict[int, float] = field(default_factory=dict)

    def path(self, runs: int) -> Path:
        path = self.directory / f"test_{self.name}_r{runs}.py"
        if not path.exists():
            path.write_text(self.template.format(workers=WORKERS, runs=runs))
        return path

    def __call__(self, runs: int) -> float:
        path = self.path(runs)
        times = CallTimes()
        args = [
            str(path),
            "-c",
            str(self.directory / "pytest.ini"),
            "--rootdir",
            str(self.directory),
            *PYTEST_ARGS,
            *other_plugins_off(),
            *self.extra,
        ]
        output = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            code = pytest.main(args, plugins=[times])
        elapsed = time.perf_counter() - start
        check(
            code == 0 and len(times.calls) == 1,
            f"pytest on {path.name} exited {code}:\n{output.getvalue()}",
        )
        self.call_times[runs] = times.calls[0]
        return elapsed


def other_plugins_off() -> list[str]:
    """``-p no:NAME`` for every other installed pytest plugin: they add nothing per run, but
    their loading makes the fixed cost of each pytest invocation larger and noisier."""
    names = {entry.name for entry in importlib.metadata.entry_points(group="pytest11")}
    return [arg for name in sorted(names - {"concurrency"}) for arg in ("-p", f"no:{name}")]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"harness_overhead: {message}")


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Arm:
    label: str
    form: str  # "marker" or "harness"
    measure: Callable[[int], float]
    runs: int
    hand: bool = False
    per_run: list[float] = field(default_factory=list)  # seconds per run, one per repetition
    cpu_per_run: list[float] = field(default_factory=list)  # CPU seconds of this process
    call_per_run: list[float] = field(default_factory=list)  # pytest arms: call phase only

    def repeat(self) -> None:
        many, many_cpu = self.timed(self.runs)
        many_call = self.call_time(self.runs)
        one, one_cpu = self.timed(1)
        one_call = self.call_time(1)
        self.per_run.append((many - one) / (self.runs - 1))
        self.cpu_per_run.append((many_cpu - one_cpu) / (self.runs - 1))
        if many_call is not None and one_call is not None:
            self.call_per_run.append((many_call - one_call) / (self.runs - 1))

    def timed(self, runs: int) -> tuple[float, float]:
        gc.collect()
        cpu = time.process_time()
        wall = self.measure(runs)
        return wall, time.process_time() - cpu

    def call_time(self, runs: int) -> float | None:
        if isinstance(self.measure, PytestArm):
            return self.measure.call_times.get(runs)
        return None


def build_arms(directory: Path, marker_runs: int, harness_runs: int) -> list[Arm]:
    (directory / "pytest.ini").write_text("[pytest]\n")
    pytest_marker = PytestArm(directory, MARKER_TEST, "marker")
    pytest_harness = PytestArm(directory, HARNESS_TEST, "harness")
    untracked_marker = PytestArm(directory, MARKER_TEST, "marker", LOCK_TRACKING_OFF)
    untracked_harness = PytestArm(directory, HARNESS_TEST, "harness", LOCK_TRACKING_OFF)
    m, h = marker_runs, harness_runs
    return [
        Arm(
            "hand-written, Barrier(8) once per run",
            "marker",
            lambda r: hand_barrier8(r, None),
            m,
            hand=True,
        ),
        Arm(
            "hand-written, Barrier(8), switch interval 1 µs",
            "marker",
            lambda r: hand_barrier8(r, SWITCH_INTERVAL),
            m,
            hand=True,
        ),
        Arm("ours: pytest, @concurrent marker (defaults)", "marker", pytest_marker, m),
        Arm(
            "ours: pytest, @concurrent marker, --concurrency-lock-order=off",
            "marker",
            untracked_marker,
            m,
        ),
        Arm("ours: ThreadRunner + run_series", "marker", direct_marker, m),
        Arm(
            "hand-written, Barrier(9) twice per run",
            "harness",
            lambda r: hand_barrier9(r, None),
            h,
            hand=True,
        ),
        Arm(
            "hand-written, Barrier(9), switch interval 1 µs",
            "harness",
            lambda r: hand_barrier9(r, SWITCH_INTERVAL),
            h,
            hand=True,
        ),
        Arm("ours: pytest, concurrency.runs() harness (defaults)", "harness", pytest_harness, h),
        Arm(
            "ours: pytest, concurrency.runs() harness, --concurrency-lock-order=off",
            "harness",
            untracked_harness,
            h,
        ),
        Arm("ours: Concurrency object, no pytest", "harness", fixture_harness, h),
        Arm("ours: ThreadRunner + run_series(count=1) per run", "harness", direct_harness, h),
    ]


def measure(arms: list[Arm], reps: int, progress: bool) -> None:
    for arm in arms:  # warm-up: imports, pytest's plugin loading, thread creation paths
        arm.measure(min(arm.runs, 50))
    for rep in range(reps):
        order = arms if rep % 2 == 0 else arms[::-1]
        started = time.perf_counter()
        for arm in order:
            arm.repeat()
        if progress:
            print(
                f"  repetition {rep + 1}/{reps}: {time.perf_counter() - started:.1f}s",
                file=sys.stderr,
                flush=True,
            )


# -- reporting --------------------------------------------------------------------------------


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}"


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def paired_ratio(ours: Arm, hand: Arm) -> float:
    """Median over repetitions of ours/hand, each pair measured in the same repetition."""
    return statistics.median(o / h for o, h in zip(ours.per_run, hand.per_run, strict=True))


def table(arms: list[Arm], form: str) -> list[str]:
    group = [arm for arm in arms if arm.form == form]
    hands = [arm for arm in group if arm.hand]
    default_hand, fast_hand = hands
    lines = [
        "| arm | runs R | µs per run, median | p25-p75 | ours / hand-written | "
        "ours / hand-written at 1 µs | CPU µs per run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in group:
        median = statistics.median(arm.per_run)
        low, high = quartiles(arm.per_run)
        if arm.hand:
            ratio = fast = "—"
        else:
            ratio = (
                f"{median / statistics.median(default_hand.per_run):.2f} "
                f"(paired {paired_ratio(arm, default_hand):.2f})"
            )
            fast = (
                f"{median / statistics.median(fast_hand.per_run):.2f} "
                f"(paired {paired_ratio(arm, fast_hand):.2f})"
            )
        cpu = us(statistics.median(arm.cpu_per_run))
        lines.append(
            f"| {arm.label} | {arm.runs} | {us(median)} | {us(low)}-{us(high)} | "
            f"{ratio} | {fast} | {cpu} |"
        )
        if arm.call_per_run:
            call = statistics.median(arm.call_per_run)
            low, high = quartiles(arm.call_per_run)
            ratio = f"{call / statistics.median(default_hand.per_run):.2f}"
            fast = f"{call / statistics.median(fast_hand.per_run):.2f}"
            lines.append(
                f"| … same, call phase only (report.duration) | {arm.runs} | "
                f"{us(call)} | {us(low)}-{us(high)} | {ratio} | {fast} | |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--reps", type=int, help="repetitions per arm (default 15, quick 3)")
    parser.add_argument("--marker-runs", type=int, help="R for the marker form (default 1000)")
    parser.add_argument("--harness-runs", type=int, help="R for the harness form (default 500)")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 15)
    marker_runs = args.marker_runs or (200 if args.quick else 1000)
    harness_runs = args.harness_runs or (100 if args.quick else 500)
    check(reps >= 1 and marker_runs >= 2 and harness_runs >= 2, "need reps >= 1 and R >= 2")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="harness-overhead-") as tmp:
        arms = build_arms(Path(tmp), marker_runs, harness_runs)
        measure(arms, reps, progress=True)
    total = time.perf_counter() - started

    print(
        f"machine: {os.cpu_count()} CPUs online, usable {len(os.sched_getaffinity(0))}; "
        f"{cpu_model()}; Python {platform.python_version()}; pytest {pytest.__version__}"
    )
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {reps} interleaved repetitions; "
        f"{total:.0f}s in all"
    )
    print(
        "per run = (T(R) - T(1)) / (R - 1), wall time; 8 workers, empty body, perturbation "
        "off; ratio = ratio of medians (median of the per-repetition ratios); CPU = this "
        "process's CPU time per run, same subtraction"
    )
    print()
    print("Marker form: `@pytest.mark.concurrent(workers=8, runs=R, perturb=False)`")
    print()
    print("\n".join(table(arms, "marker")))
    print()
    print("Explicit harness: `for run in concurrency.runs(R): run(fn, workers=8)`")
    print()
    print("\n".join(table(arms, "harness")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
