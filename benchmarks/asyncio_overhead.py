"""asyncio mode's cost per run, side by side with ``asyncio.gather`` on a fresh loop.

W tasks per run (default 8), each awaiting ``asyncio.sleep(0)`` once (one switch per task):

* hand-written, one loop: ``asyncio.run(main())`` where ``main`` awaits
  ``asyncio.gather(*[body() for _ in range(W)])`` R times;
* hand-written, a fresh loop per run: ``asyncio.run(gather(...))`` R times;
* ours, ``AsyncioRunner.run_series``: the loop runs in the plugin's loop thread, run 0 in FIFO
  order, later runs shuffled and held back from the seed;
* the same on the real clock (``clock="real"``: what the virtual clock itself costs), and
  without the trace of each run's steps (what the readable failure report costs);
* the same with every run in FIFO order (what the seeded ordering itself costs);
* ours, the async harness: ``for run in concurrency.runs(R): await run(body, workers=W)`` inside
  an ``async def`` run on the plugin's loop, through the ``Concurrency`` object;
* ours through pytest: ``@pytest.mark.concurrent(workers=W, runs=R) async def``, with
  ``pytest.main`` in this process; per run ``(T(R) - T(1)) / (R - 1)``.

Arms alternate within each repetition; medians over repetitions, and the median of the
per-repetition ratios ("paired").

    python benchmarks/asyncio_overhead.py            # about a minute
    python benchmarks/asyncio_overhead.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_common import PytestMarker

from pytest_concurrency.driver.harness import Concurrency, HarnessConfig
from pytest_concurrency.driver.series import run_series
from pytest_concurrency.engine.outcomes import SeriesOutcome
from pytest_concurrency.runners import aio
from pytest_concurrency.runners.base import Runner, RunPlan

SEED = 1
MARKER_TEST = """\
import asyncio
import pytest


@pytest.mark.concurrent(workers={workers}, runs={runs})
async def test_tasks():
    await asyncio.sleep(0)
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
)


async def body() -> None:
    await asyncio.sleep(0)


def gather_one_loop(workers: int, runs: int) -> float:
    async def main() -> None:
        for _ in range(runs):
            await asyncio.gather(*[body() for _ in range(workers)])

    start = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - start


def gather_fresh_loops(workers: int, runs: int) -> float:
    async def one_run() -> None:
        await asyncio.gather(*[body() for _ in range(workers)])

    start = time.perf_counter()
    for _ in range(runs):
        asyncio.run(one_run())
    return time.perf_counter() - start


def ours_runner(
    workers: int, runs: int, *, fifo: bool = False, clock: str = "virtual", trace: bool = True
) -> float:
    aio.TRACE_STEPS = trace
    runner = aio.AsyncioRunner(workers, perturb=not fifo, clock=clock)  # perturb=False: FIFO
    outcome = SeriesOutcome(mode="asyncio", workers=workers, runs_planned=runs, seed=SEED)
    try:
        run_series(
            runner, [body] * workers, outcome=outcome, plan=RunPlan(count=1), timeout=60
        )  # start the loop thread
        start = time.perf_counter()
        run_series(runner, [body] * workers, outcome=outcome, plan=RunPlan(count=runs), timeout=60)
        elapsed = time.perf_counter() - start
    finally:
        runner.close()
        aio.TRACE_STEPS = True
    assert not outcome.failed
    return elapsed


def ours_async_harness(workers: int, runs: int) -> float:
    config = HarnessConfig(
        mode="asyncio",
        workers=workers,
        runs=runs,
        seed=SEED,
        timeout=60,
        budget=None,
        reproduce="",
        reproduce_seed=SEED,
    )

    def factory(mode: str, count: int, *rest: object) -> Runner:
        return aio.AsyncioRunner(count)

    concurrency = Concurrency(config, factory)
    elapsed: list[float] = []

    async def test() -> None:
        start = time.perf_counter()
        for run in concurrency.runs(runs):
            await run(body, workers=workers)
        elapsed.append(time.perf_counter() - start)

    try:
        aio.run_test_coroutine(test)
    finally:
        concurrency.close()
    return elapsed[0]


HAND = "hand-written: gather, one loop"


def table(per_run: dict[str, list[float]], runs: dict[str, int]) -> list[str]:
    hand = per_run[HAND]
    lines = [
        "| arm | runs R | µs per run, median | p25-p75 | ours / gather on one loop (paired) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in per_run.items():
        median = statistics.median(values)
        q = statistics.quantiles(values, n=4) if len(values) >= 4 else [min(values), 0, max(values)]
        ratio = (
            "—"
            if name == HAND
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
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--reps", type=int)
    parser.add_argument("--runs", type=int, help="R for the direct arms (default 2000)")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 9)
    runs = args.runs or (200 if args.quick else 2000)
    w = args.workers
    with tempfile.TemporaryDirectory() as directory:
        marker = PytestMarker(Path(directory), w, MARKER_TEST, "test_tasks", PYTEST_ARGS)
        arms: dict[str, tuple[int, Callable[[], float]]] = {
            HAND: (runs, lambda: gather_one_loop(w, runs) / runs),
            "hand-written: asyncio.run(gather) per run": (
                runs,
                lambda: gather_fresh_loops(w, runs) / runs,
            ),
            "ours: AsyncioRunner + run_series (seeded order)": (
                runs,
                lambda: ours_runner(w, runs) / runs,
            ),
            "ours: AsyncioRunner, seeded order, no step trace": (
                runs,
                lambda: ours_runner(w, runs, trace=False) / runs,
            ),
            "ours: AsyncioRunner, seeded order, real clock": (
                runs,
                lambda: ours_runner(w, runs, clock="real") / runs,
            ),
            "ours: AsyncioRunner, FIFO order in every run": (
                runs,
                lambda: ours_runner(w, runs, fifo=True) / runs,
            ),
            "ours: async harness, await run(...)": (
                runs,
                lambda: ours_async_harness(w, runs) / runs,
            ),
            "ours: pytest, @concurrent async def": (runs, lambda: marker.per_run(runs)),
        }
        per_run: dict[str, list[float]] = {name: [] for name in arms}
        names = list(arms)
        for rep in range(reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                per_run[name].append(arms[name][1]())
            print(f"  repetition {rep + 1}/{reps}", file=sys.stderr, flush=True)
    print(
        f"{w} tasks per run, each awaiting sleep(0) once; {reps} repetitions; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print("\n".join(table(per_run, {name: arm[0] for name, arm in arms.items()})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
