"""``concurrency.barrier()`` for the threads or processes of one run.

:class:`threading.Barrier` (and :class:`multiprocessing.Barrier`, built on it) has one state for
every generation: when a worker fails just after the last one arrived, its ``abort()`` breaks the
barrier before the released waiters have woken, and they raise ``BrokenBarrierError`` although
they had passed. The test's real failures after the barrier were then lost as collateral (issue
14). :class:`RunBarrier` keeps a generation number: a waiter whose generation was released
returns, whatever happened since; only the generation still filling is broken by ``abort()``.

The condition is made by the caller: ``threading.Condition(threading.Lock())`` for threads, looked
up at call time so that inside a tracked window it is the cooperative one (the controlled
scheduler can then run a worker waiting here), or a :mod:`multiprocessing` condition for processes,
with the counters in shared memory.
"""

from __future__ import annotations

import threading
from collections.abc import MutableSequence
from typing import Any

from pytest_concurrency.errors import BarrierAborted
from pytest_concurrency.messages import BARRIER_ABORTED

ARRIVED, GENERATION, BROKEN = 0, 1, 2
STATE_SIZE = 3


class RunBarrier:
    """A reusable barrier for ``parties`` workers, broken per generation."""

    def __init__(self, parties: int, condition: Any, state: MutableSequence[int]) -> None:
        self.parties = parties
        self._condition = condition
        self._state = state  # arrived, generation, broken: a list, or shared memory

    @property
    def broken(self) -> bool:
        return bool(self._state[BROKEN])

    def wait(self, timeout: float | None = None) -> None:
        """Wait until every party arrived; raise :class:`BarrierAborted` if this generation was
        broken (by :meth:`abort`, or by a waiter whose ``timeout`` passed)."""
        state = self._state
        with self._condition:
            if state[BROKEN]:
                raise BarrierAborted(BARRIER_ABORTED)
            generation = state[GENERATION]
            state[ARRIVED] += 1
            if state[ARRIVED] == self.parties:
                state[ARRIVED] = 0
                state[GENERATION] = generation + 1
                self._condition.notify_all()
                return
            self._condition.wait_for(
                lambda: state[GENERATION] != generation or state[BROKEN], timeout
            )
            if state[GENERATION] != generation:
                return  # released, even if another worker aborted since
            state[BROKEN] = 1
            self._condition.notify_all()
            raise BarrierAborted(BARRIER_ABORTED)

    def abort(self) -> None:
        """Break the generation still filling: its waiters, and later arrivals, give up."""
        with self._condition:
            self._state[BROKEN] = 1
            self._condition.notify_all()

    def reset(self) -> None:
        """Make the barrier whole again, between runs (no worker waits at it then)."""
        with self._condition:
            self._state[ARRIVED] = 0
            self._state[BROKEN] = 0


def thread_barrier(parties: int) -> RunBarrier:
    """A barrier for threads; made inside a tracked window, its condition is the tracked one."""
    return RunBarrier(parties, threading.Condition(threading.Lock()), [0] * STATE_SIZE)


def process_barrier(parties: int, context: Any) -> RunBarrier:
    """A barrier for the processes of ``context`` (a multiprocessing context), passed to them
    when they start."""
    return RunBarrier(parties, context.Condition(context.Lock()), context.RawArray("i", STATE_SIZE))
