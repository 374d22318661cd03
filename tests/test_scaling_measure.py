"""The measuring half of scaling, run for real but small: structure, errors and deadlines.

No timing assertions here: whether a verdict is right on this machine is what
``benchmarks/scaling/run_labelled.py`` checks and ``benchmarks/README.md`` records.
"""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from pytest_concurrency import scaling
from pytest_concurrency.cores import core_budget, gil_enabled
from pytest_concurrency.scaling import (
    VERDICTS,
    ScalingMeasurementError,
    ScalingWorkError,
    measure_scaling,
)
from pytest_concurrency.scaling_runner import Unit, WaitSampler, run_thread_round

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
    assert report.verdict in VERDICTS
    assert [level.workers for level in report.levels["threads"]] == [1, 2, 3]
    assert "processes" not in report.levels
    assert all(level.rounds >= 1 for level in report.levels["threads"])
    data = report.to_json()
    assert data["unit"] == "small_work"
    first = data["levels"][0]
    assert len(first["wall_s"]) == first["rounds"] + first["set_aside"]


def test_process_measurement_runs_in_a_pool_and_reaps_it() -> None:
    report = measure_scaling(small_work, workers=2, modes=("processes",), rounds=3, budget=2)
    assert report.verdict in VERDICTS
    level = report.level("processes", 2)
    assert level.cores_used >= 0
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
