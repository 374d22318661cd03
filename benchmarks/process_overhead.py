"""Process mode's cost per run, side by side with a hand-written pool of persistent processes.

W worker processes (default 2, the cores of the machine these figures come from), an empty
body, schedule perturbation off, all with the ``forkserver`` start method (pytest and our child
module preloaded in the server, as the plugin does):

* hand-written: W persistent processes and the parent meet at a ``multiprocessing.Barrier(W+1)``
  twice per run (the run starts; the run is over), the body called in between: the least a
  pool that starts its workers together and knows when they are done can do;
* ours, ``ProcessRunner`` + ``run_series``: one message to each child, the children cross a
  ``Barrier(W)`` among themselves, call, and each sends back its answer (plain data); once
  without and once with the seeded start jitter (each worker waits up to 0, 20, 100 or 500 µs,
  drawn per run), which is on whenever schedule perturbation is;
* ours through pytest: ``@pytest.mark.concurrent(mode="processes", workers=W, runs=R)`` on an
  empty body, run in this process with ``pytest.main``; its per-run cost is
  ``(T(R) - T(1)) / (R - 1)``, so pool start-up and pytest's own work cancel out.

The two direct arms time R runs of an already started pool. The arms alternate within every
repetition (the order reverses every other one), and the table gives medians over repetitions
and the median of the per-repetition ratios ("paired").

    python benchmarks/process_overhead.py            # about a minute
    python benchmarks/process_overhead.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_common import PytestMarker

from pytest_concurrency.driver.series import run_series
from pytest_concurrency.engine.outcomes import SeriesOutcome
from pytest_concurrency.runners.base import RunPlan
from pytest_concurrency.runners.processes import ProcessRunner, preload_forkserver

METHOD = "forkserver"
SEED = 1
MARKER_TEST = """\
import pytest


@pytest.mark.concurrent(mode="processes", workers={workers}, runs={runs}, perturb=False)
def test_empty():
    pass
"""
PYTEST_ARGS = (
    "-q",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:run-parallel",
    "-p",
    "no:randomly",
    "-p",
    "no:asyncio",
    f"--concurrency-seed={SEED}",
    "--concurrency-lock-order=off",
)


def empty() -> None:
    pass


def hand_worker(barrier: object, runs: int) -> None:
    for _ in range(runs + 1):  # one warm-up run
        barrier.wait()  # type: ignore[attr-defined]
        empty()
        barrier.wait()  # type: ignore[attr-defined]


def hand_written(workers: int, runs: int) -> float:
    """R runs of W persistent processes meeting the parent at a Barrier(W+1) twice per run."""
    context = multiprocessing.get_context(METHOD)
    barrier = context.Barrier(workers + 1)
    processes = [context.Process(target=hand_worker, args=(barrier, runs)) for _ in range(workers)]
    for process in processes:
        process.start()
    barrier.wait()
    barrier.wait()  # the warm-up run: every child is up
    start = time.perf_counter()
    for _ in range(runs):
        barrier.wait()
        barrier.wait()
    elapsed = time.perf_counter() - start
    for process in processes:
        process.join()
    return elapsed


class OurPool:
    """One ``ProcessRunner`` kept across repetitions, as a test item keeps its pool."""

    def __init__(self, workers: int, *, jitter: bool) -> None:
        self.runner = ProcessRunner(workers, start_jitter=jitter)
        self.workers = workers
        self.series(10)  # start the pool

    def series(self, runs: int) -> float:
        outcome = SeriesOutcome(
            mode="processes", workers=self.workers, runs_planned=runs, seed=SEED
        )
        start = time.perf_counter()
        run_series(
            self.runner,
            [empty] * self.workers,
            outcome=outcome,
            plan=RunPlan(count=runs),
            timeout=60,
        )
        elapsed = time.perf_counter() - start
        assert outcome.runs_done == runs and not outcome.failed
        return elapsed


def measure(arms: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    per_run: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            per_run[name].append(arms[name]())
        print(f"  repetition {rep + 1}/{reps}", file=sys.stderr, flush=True)
    return per_run


def table(per_run: dict[str, list[float]], runs: dict[str, int]) -> list[str]:
    hand = per_run["hand-written"]
    lines = [
        "| arm | runs R | µs per run, median | p25-p75 | ours / hand-written (paired) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in per_run.items():
        median = statistics.median(values)
        q = statistics.quantiles(values, n=4) if len(values) >= 4 else [min(values), 0, max(values)]
        ratio = (
            "—"
            if name == "hand-written"
            else (
                f"{median / statistics.median(hand):.2f} "
                f"({statistics.median(o / h for o, h in zip(values, hand, strict=True)):.2f})"
            )
        )
        lines.append(
            f"| {name} | {runs[name]} | {median * 1e6:.0f} | "
            f"{q[0] * 1e6:.0f}-{q[2] * 1e6:.0f} | {ratio} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int)
    parser.add_argument("--runs", type=int, help="R for the direct arms (default 2000)")
    parser.add_argument("--pytest-runs", type=int, help="R through pytest (default 1000)")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 9)
    runs = args.runs or (200 if args.quick else 2000)
    pytest_runs = args.pytest_runs or (100 if args.quick else 1000)
    workers = args.workers
    preload_forkserver(multiprocessing.get_context(METHOD))  # the same server for every arm
    ours = OurPool(workers, jitter=False)
    jittered = OurPool(workers, jitter=True)
    with tempfile.TemporaryDirectory() as directory:
        marker = PytestMarker(
            Path(directory), workers, MARKER_TEST, "test_empty_processes", PYTEST_ARGS
        )
        arms: dict[str, Callable[[], float]] = {
            "hand-written": lambda: hand_written(workers, runs) / runs,
            "ours: ProcessRunner + run_series": lambda: ours.series(runs) / runs,
            "ours: same, seeded start jitter on": lambda: jittered.series(runs) / runs,
            "ours: pytest, @concurrent(mode='processes', perturb=False)": lambda: marker.per_run(
                pytest_runs
            ),
        }
        counts = {name: runs for name in arms}
        counts["ours: pytest, @concurrent(mode='processes', perturb=False)"] = pytest_runs
        try:
            per_run = measure(arms, reps)
        finally:
            ours.runner.close()
            jittered.runner.close()
    print(
        f"{workers} worker processes, {METHOD}, empty body; {reps} repetitions; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print("\n".join(table(per_run, counts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
