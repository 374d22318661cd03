"""What starting a process costs against starting a thread, per start method.

"Processes are much more expensive to create than threads" is the common claim; this measures
it. Each figure is the median time to start one worker and join it after it ran a function:

* a thread (``threading.Thread``);
* a process by ``fork`` (the parent has pytest imported, as pytest does), ``forkserver`` (pytest and our child module preloaded in the server,
  as process mode does; the server itself is started once, before the measurements) and
  ``spawn``, each running an empty function, and each running ``import pytest`` (what a worker
  that loads a test module pays on top);
* what a test in each mode pays once for its pool of W workers (default 2): start, one run of
  an empty body, close: ``ThreadRunner`` against ``ProcessRunner`` (``forkserver``).

Kinds are sampled in turn, round after round, so that all of them see the same noise; the
ratio column divides by the thread start of the same round (median of per-round ratios).

    python benchmarks/start_cost.py            # about a minute
    python benchmarks/start_cost.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import pytest  # noqa: F401 - the parent is a pytest process: fork children inherit pytest

from pytest_concurrency.driver.series import run_series
from pytest_concurrency.engine.outcomes import SeriesOutcome
from pytest_concurrency.runners.base import Runner, RunPlan
from pytest_concurrency.runners.processes import ProcessRunner, preload_forkserver
from pytest_concurrency.runners.threads import ThreadRunner

METHODS = ("fork", "forkserver", "spawn")
THREAD = "thread: start + join"


def nothing() -> None:
    pass


def import_pytest() -> None:
    importlib.import_module("pytest")  # free if inherited (fork) or preloaded (forkserver)


def start_a_thread() -> None:
    thread = threading.Thread(target=nothing)
    thread.start()
    thread.join()


def process_starter(method: str, target: Callable[[], None]) -> Callable[[], None]:
    context = multiprocessing.get_context(method)

    def start() -> None:
        process = context.Process(target=target)
        process.start()
        process.join()
        assert process.exitcode == 0

    return start


def pool_once(make: Callable[[], Runner], workers: int) -> Callable[[], None]:
    def start() -> None:
        runner = make()
        outcome = SeriesOutcome(mode=runner.mode, workers=workers, runs_planned=1, seed=1)
        try:
            run_series(
                runner, [nothing] * workers, outcome=outcome, plan=RunPlan(count=1), timeout=60
            )
        finally:
            runner.close()
        assert outcome.runs_done == 1 and not outcome.failed

    return start


def kinds(workers: int) -> dict[str, Callable[[], None]]:
    found: dict[str, Callable[[], None]] = {THREAD: start_a_thread}
    available = multiprocessing.get_all_start_methods()
    for method in (m for m in METHODS if m in available):
        found[f"process, {method}: start + join"] = process_starter(method, nothing)
        found[f"process, {method}: start + import pytest + join"] = process_starter(
            method, import_pytest
        )
    found[f"ThreadRunner pool of {workers}: start, 1 run, close"] = pool_once(
        lambda: ThreadRunner(workers), workers
    )
    found[f"ProcessRunner pool of {workers} (forkserver): start, 1 run, close"] = pool_once(
        lambda: ProcessRunner(workers, start_method="forkserver"), workers
    )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 15)
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        preload_forkserver(context)
        process_starter("forkserver", nothing)()  # start the server outside the measurements
    starts = kinds(args.workers)
    seconds: dict[str, list[float]] = {name: [] for name in starts}
    for index in range(rounds):
        names = list(starts) if index % 2 == 0 else list(starts)[::-1]
        for name in names:
            began = time.perf_counter()
            starts[name]()
            seconds[name].append(time.perf_counter() - began)
        print(f"  round {index + 1}/{rounds}", file=sys.stderr, flush=True)
    thread = seconds[THREAD]
    print(f"{rounds} rounds; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print("| start | median ms | p25-p75 ms | / thread start (paired) |")
    print("|---|---:|---:|---:|")
    for name, values in seconds.items():
        q = statistics.quantiles(values, n=4) if len(values) >= 4 else [min(values), 0, max(values)]
        paired = statistics.median(v / t for v, t in zip(values, thread, strict=True))
        print(
            f"| {name} | {statistics.median(values) * 1e3:.2f} | {q[0] * 1e3:.2f}-"
            f"{q[2] * 1e3:.2f} | {'—' if name == THREAD else f'{paired:,.0f}x'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
