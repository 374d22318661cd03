"""Run the race corpus's marker-form bodies under pytest-run-parallel, for the comparison.

A pytest plugin (``-p run_parallel_shim -p no:concurrency --parallel-threads=N
--iterations=K``) that gives the corpus bodies the part of the ``concurrency`` fixture they
use (``worker``, ``run``, ``workers``, ``barrier()``) on top of pytest-run-parallel's own
threads: pytest-run-parallel starts the N threads, meets them at its barrier before every
iteration and shrinks the switch interval, exactly as it does for any test. The shim only
names the threads and counts the iterations, and ignores the ``concurrent`` marker.

Per-test iteration counts (to fit a time budget) come from ``RUN_PARALLEL_SHIM_ITERATIONS``.
It also notes, per test, when the first call failed (seconds after the first call started),
and writes that to the JSON file named by ``RUN_PARALLEL_SHIM_JSON`` at the end of the session,
so that the benchmark can report a time to first detection for pytest-run-parallel too.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

BARRIER_TIMEOUT = 2.0
"""Seconds a body waits at ``barrier()`` before giving up (a failed worker never arrives)."""
JSON_ENV = "RUN_PARALLEL_SHIM_JSON"
ITERATIONS_ENV = "RUN_PARALLEL_SHIM_ITERATIONS"
"""JSON ``{nodeid: iterations}``: per-test ``iterations`` markers, to fit a time budget."""

_identity = threading.local()
_first_failure: dict[str, float | None] = {}


class RunParallelConcurrency:
    """The body-side API of the ``concurrency`` fixture, for pytest-run-parallel threads."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._barrier = threading.Barrier(workers, timeout=BARRIER_TIMEOUT)

    @property
    def worker(self) -> int:
        return int(_identity.worker)

    @property
    def run(self) -> int:
        return int(_identity.run)

    def barrier(self, timeout: float | None = None) -> None:
        self._barrier.wait(timeout)


def _tracked(nodeid: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """Name each thread (worker index by first call) and count its calls (run index)."""
    workers: dict[int, int] = {}
    numbers = itertools.count()
    calls = threading.local()
    started: list[float] = []
    _first_failure[nodeid] = None

    @functools.wraps(function)
    def body(*args: Any, **kwargs: Any) -> Any:
        ident = threading.get_ident()
        if ident not in workers:
            workers[ident] = next(numbers)
        calls.count = getattr(calls, "count", -1) + 1
        _identity.worker, _identity.run = workers[ident], calls.count
        if not started:
            started.append(time.perf_counter())
        try:
            return function(*args, **kwargs)
        except BaseException:
            if _first_failure[nodeid] is None:
                _first_failure[nodeid] = time.perf_counter() - started[0]
            raise

    return body


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "concurrent(**kwargs): ignored under pytest-run-parallel")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    iterations: dict[str, int] = json.loads(os.environ.get(ITERATIONS_ENV, "{}"))
    for item in items:
        if isinstance(item, pytest.Function):
            item.obj = _tracked(item.nodeid, item.obj)
            if item.nodeid in iterations:
                item.add_marker(pytest.mark.iterations(iterations[item.nodeid]))


@pytest.fixture
def concurrency(num_parallel_threads: int) -> RunParallelConcurrency:
    return RunParallelConcurrency(num_parallel_threads)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(JSON_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump({"first_failure_seconds": _first_failure}, file)
