"""The measuring half of scaling, run for real but small: structure, errors and deadlines.

No timing assertions here: whether a verdict is right on this machine is what
``benchmarks/scaling/run_labelled.py`` checks and ``benchmarks/README.md`` records.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import threading
import time
import types
from collections.abc import Callable

import pytest

from pytest_concurrency.engine.cores import CoreBudget, core_budget, gil_enabled
from pytest_concurrency.errors import ScalingMeasurementError, ScalingWorkError
from pytest_concurrency.plugin import scaling_hooks
from pytest_concurrency.scaling import api as scaling
from pytest_concurrency.scaling.api import measure_scaling
from pytest_concurrency.scaling.measure import Unit, WaitSampler, run_thread_round
from pytest_concurrency.scaling.records import WorkerSample
from pytest_concurrency.scaling.report import ScalingReport
from pytest_concurrency.scaling.verdict import IO_BOUND, SCALES

CALLS_IN_THIS_PROCESS = [0]


def small_work() -> int:
    return sum(range(2000))


def fails_in_worker_processes() -> None:
    if multiprocessing.parent_process() is not None:
        CALLS_IN_THIS_PROCESS[0] += 1
        if CALLS_IN_THIS_PROCESS[0] > 1:
            raise LookupError("only in a worker process")


def hangs_in_worker_processes() -> None:
    if multiprocessing.parent_process() is not None:
        CALLS_IN_THIS_PROCESS[0] += 1
        if CALLS_IN_THIS_PROCESS[0] > 1:
            time.sleep(60)


def test_threads_only_measurement_gives_a_verdict_and_every_level() -> None:
    report = measure_scaling(small_work, workers=3, modes="threads", rounds=3, budget=0.5)
    if report.gil_enabled:
        # Pure-Python work on threads holding the GIL can neither scale nor look I/O-bound.
        assert report.verdict not in (SCALES, IO_BOUND), report.summary()
    assert report.summary().startswith(f"scaling of small_work: {report.verdict}")
    assert [level.workers for level in report.levels["threads"]] == [1, 2, 3]
    assert "processes" not in report.levels
    assert all(level.rounds >= 1 for level in report.levels["threads"])
    data = report.to_json()
    assert data["unit"] == "small_work"
    first = data["levels"][0]
    assert len(first["wall_s"]) == first["rounds"] + first["set_aside"]


def test_process_measurement_runs_in_a_pool_and_reaps_it() -> None:
    report = measure_scaling(small_work, workers=2, modes=("processes",), rounds=3, budget=2)
    assert report.verdict != IO_BOUND, report.summary()  # the work keeps a core busy
    level = report.level("processes", 2)
    # CPU time over wall time: some CPU was measured, and no more than two workers can use.
    assert 0 < level.cores_used <= 2 * 1.05, report.summary()
    assert multiprocessing.active_children() == []


def test_an_error_in_the_first_call_propagates_unchanged() -> None:
    def broken() -> None:
        raise KeyError("from the unit")

    with pytest.raises(KeyError, match="from the unit"):
        measure_scaling(broken, modes="threads", budget=0.5)


def test_an_error_in_a_worker_thread_is_reported_with_its_type() -> None:
    def fails_off_the_main_thread() -> None:
        if threading.current_thread() is not threading.main_thread():
            raise LookupError("only in a worker thread")

    with pytest.raises(ScalingWorkError, match="LookupError: only in a worker thread"):
        measure_scaling(fails_off_the_main_thread, modes="threads", rounds=3, budget=0.5)


def test_an_error_in_a_worker_process_carries_its_traceback() -> None:
    with pytest.raises(ScalingWorkError, match="LookupError: only in a worker process"):
        measure_scaling(fails_in_worker_processes, modes="processes", rounds=3, budget=2)
    assert multiprocessing.active_children() == []


def test_a_hanging_process_round_stops_at_its_deadline_and_is_reaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scaling, "ROUND_DEADLINE_FLOOR", 0.5)
    monkeypatch.setattr(scaling, "ROUND_DEADLINE_FACTOR", 1.0)
    with pytest.raises(ScalingMeasurementError, match=r"did not finish within 0\.5 s"):
        measure_scaling(hangs_in_worker_processes, modes="processes", rounds=3, budget=1)
    assert multiprocessing.active_children() == []


def test_a_hanging_thread_round_stops_at_its_deadline() -> None:
    release = threading.Event()

    def waits_off_the_main_thread() -> None:
        if threading.current_thread() is not threading.main_thread():
            release.wait(30)

    try:
        with pytest.raises(ScalingMeasurementError, match="left running"):
            run_thread_round(Unit(waits_off_the_main_thread, (), {}), 2, 1, deadline=0.3)
    finally:
        release.set()


def test_the_wait_sampler_names_the_line_where_threads_wait_for_a_lock() -> None:
    lock = threading.Lock()

    def locked() -> None:
        with lock:
            time.sleep(0.002)

    sampler = WaitSampler()
    run_thread_round(Unit(locked, (), {}), 4, 40, deadline=30, sampler=sampler)
    site = sampler.busiest()
    assert site is not None
    assert "in locked" in site.location
    assert site.source in ("with lock:", "time.sleep(0.002)")


def test_usable_cores_and_gil_state_are_recorded() -> None:
    report = measure_scaling(small_work, workers=2, modes="threads", rounds=3, budget=0.3)
    data = report.to_json()
    assert data["usable_cores"] == core_budget().usable
    assert data["gil_enabled"] is gil_enabled()


CHILD_CPU_PER_CALL = 0.02


def burns_cpu() -> None:
    """Uses at least CHILD_CPU_PER_CALL seconds of this process's CPU time, however fast."""
    start = time.process_time()
    while time.process_time() - start < CHILD_CPU_PER_CALL:
        pass


def test_process_workers_cpu_time_is_measured_in_the_child() -> None:
    """The parent only waits on pipes: CPU time read there would be about zero."""
    report = measure_scaling(burns_cpu, workers=2, modes="processes", rounds=3, budget=2)
    calls = report.context.calls_per_worker
    for record in report.records:
        assert len(record.cpu) == record.workers
        assert all(cpu >= 0.99 * calls * CHILD_CPU_PER_CALL for cpu in record.cpu)
    assert multiprocessing.active_children() == []


# --------------------------------------------------------------------------- simulated machines

BATCH = 0.1


def _samples(workers: int, wall: float, cpu: float) -> list[WorkerSample]:
    start = time.perf_counter()
    return [WorkerSample(start, start + wall, cpu, 0.0) for _ in range(workers)]


def _parallel(workers: int) -> list[WorkerSample]:
    """Independent CPU work on two cores."""
    return _samples(workers, BATCH * math.ceil(workers / 2), BATCH)


def _one_at_a_time(workers: int) -> list[WorkerSample]:
    """The threads take turns: one core of CPU in all, whatever the worker count."""
    return _samples(workers, BATCH * workers, BATCH)


class FakePool:
    """Processes that scale, without starting any."""

    def __init__(self, size: int, unit: Unit) -> None:
        pass

    def __enter__(self) -> FakePool:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run_round(self, workers: int, calls: int, deadline: float) -> list[WorkerSample]:
        return _parallel(workers)


@pytest.fixture
def simulated_two_cores(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool, bool], ScalingReport]:
    """measure_scaling on a simulated 2-core machine whose threads do or do not run Python in
    parallel, with ``sys._is_gil_enabled()`` answering as a GIL or a free-threaded build would.
    Only the rounds are simulated: planning, the GIL probe, the statistics and the verdict are
    the real code path."""
    monkeypatch.setattr(scaling, "core_budget", lambda: CoreBudget(2, 2, 2, None))
    monkeypatch.setattr(scaling, "ProcessPool", FakePool)

    def measure(gil: bool, threads_parallel: bool) -> ScalingReport:
        monkeypatch.setattr(sys, "_is_gil_enabled", lambda: gil, raising=False)

        def fake_thread_round(
            unit: Unit, workers: int, calls: int, deadline: float, sampler: object = None
        ) -> list[WorkerSample]:
            if unit is scaling.REFERENCE_UNIT or threads_parallel:
                return _parallel(workers)
            return _one_at_a_time(workers)

        monkeypatch.setattr(scaling, "run_thread_round", fake_thread_round)
        return measure_scaling(small_work, rounds=9, budget=1)

    return measure


def test_a_free_threaded_build_changes_what_the_verdict_says_for_threads(
    simulated_two_cores: Callable[[bool, bool], ScalingReport],
) -> None:
    """Threads at one core while processes scale: the GIL with it, a contended lock without."""
    with_gil = simulated_two_cores(True, False)
    assert with_gil.verdict == "gil-bound", with_gil.summary()
    assert with_gil.to_json()["gil_enabled"] is True
    assert "take turns holding the GIL" in with_gil.reasons[0]

    free = simulated_two_cores(False, False)
    assert free.verdict == "contended", free.summary()
    assert free.to_json()["gil_enabled"] is False
    assert "free-threaded build" in free.reasons[0]
    assert "GIL disabled" in free.summary()


def test_threads_scaling_on_a_free_threaded_build_is_said_to_come_from_the_build(
    simulated_two_cores: Callable[[bool, bool], ScalingReport],
) -> None:
    with_gil = simulated_two_cores(True, True)
    assert with_gil.verdict == "scales", with_gil.summary()
    assert "releases the GIL" in with_gil.reasons[0]

    free = simulated_two_cores(False, True)
    assert free.verdict == "scales", free.summary()
    assert "threads scale on this free-threaded build" in free.reasons[0]


# -- which tracer makes timings unreliable ------------------------------------------------------


def test_a_trace_function_is_named_by_its_module() -> None:
    class CoverageTracer:  # coverage's C tracer type lives in coverage.tracer
        __module__ = "coverage.tracer"

    def other(frame: object, event: str, arg: object) -> None:
        return None

    assert scaling_hooks._trace_function_owner(CoverageTracer()) == "coverage"
    assert scaling_hooks._trace_function_owner(other) == f"sys.settrace ({__name__})"


def test_coverage_without_a_trace_function_is_still_a_tracer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """coverage's sys.monitoring core (3.12+) sets no trace function: asked directly."""
    fake = types.SimpleNamespace(Coverage=types.SimpleNamespace(current=lambda: object()))
    monkeypatch.setattr(sys, "gettrace", lambda: None)
    monkeypatch.setitem(sys.modules, "coverage", fake)
    assert scaling_hooks.active_tracer() == "coverage"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring is 3.12+")
def test_another_monitoring_tool_is_a_tracer_and_ours_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "gettrace", lambda: None)
    monkeypatch.delitem(sys.modules, "coverage", raising=False)
    free = next(t for t in (3, 4, 5) if sys.monitoring.get_tool(t) is None)
    sys.monitoring.use_tool_id(free, scaling_hooks.OWN_MONITORING_TOOL)
    try:
        assert scaling_hooks.active_tracer() is None
    finally:
        sys.monitoring.free_tool_id(free)
    sys.monitoring.use_tool_id(free, "a profiler")
    try:
        assert scaling_hooks.active_tracer() == "sys.monitoring tool 'a profiler'"
    finally:
        sys.monitoring.free_tool_id(free)
