"""``concurrency.barrier()``'s barrier breaks only the generation still filling (issue 14)."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from pytest_concurrency.errors import BarrierAborted
from pytest_concurrency.runners.barrier import ARRIVED, RunBarrier, process_barrier

DEADLINE = 30.0


def wait_until(predicate: object) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the waiter never arrived"
        time.sleep(0.001)


def test_a_released_waiter_returns_though_the_barrier_was_aborted_before_it_woke() -> None:
    """The race of threading.Barrier, made certain: the last party releases the barrier and
    aborts it while still holding the condition, so the released waiter wakes after the
    abort. It passed, so it must return."""
    condition = threading.Condition(threading.RLock())
    state = [0, 0, 0]
    barrier = RunBarrier(2, condition, state)
    outcome: list[object] = []

    def waiter() -> None:
        try:
            barrier.wait(DEADLINE)
            outcome.append("passed")
        except BarrierAborted as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: state[ARRIVED] == 1)
    with condition:  # the waiter cannot wake before we let go
        barrier.wait(DEADLINE)
        barrier.abort()
    thread.join(DEADLINE)
    assert outcome == ["passed"]
    assert barrier.broken
    with pytest.raises(BarrierAborted):  # the next generation is the one broken
        barrier.wait(DEADLINE)


def test_abort_breaks_the_waiters_of_the_filling_generation_and_reset_mends_it() -> None:
    barrier = RunBarrier(3, threading.Condition(threading.Lock()), [0, 0, 0])
    outcomes: list[object] = []

    def waiter() -> None:
        try:
            barrier.wait(DEADLINE)
            outcomes.append("passed")
        except BarrierAborted:
            outcomes.append("aborted")

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: barrier._state[ARRIVED] == 1)
    barrier.abort()
    thread.join(DEADLINE)
    assert outcomes == ["aborted"]
    barrier.reset()
    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for each in threads:
        each.start()
    for each in threads:
        each.join(DEADLINE)
    assert outcomes == ["aborted", "passed", "passed", "passed"]


def test_a_waiter_whose_timeout_passes_breaks_the_barrier() -> None:
    barrier = RunBarrier(2, threading.Condition(threading.Lock()), [0, 0, 0])
    with pytest.raises(BarrierAborted):
        barrier.wait(0.01)
    assert barrier.broken


def _wait_in_child(barrier: RunBarrier) -> None:
    barrier.wait(DEADLINE)


def test_the_process_barrier_releases_processes_of_a_spawned_context() -> None:
    context = multiprocessing.get_context("spawn")
    barrier = process_barrier(2, context)
    child = context.Process(target=_wait_in_child, args=(barrier,))
    child.start()
    try:
        barrier.wait(DEADLINE)
    finally:
        child.join(DEADLINE)
    assert child.exitcode == 0
    assert not barrier.broken
