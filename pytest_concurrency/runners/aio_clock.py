"""asyncio mode's virtual clock, and the seeded jitter of the timers a run's tasks set.

On the virtual clock (``clock="virtual"``, the default) the plugin's own loop answers
``loop.time()`` from a :class:`VirtualClock`, which stands still while callbacks run. When a
pass of the loop finds nothing ready and nothing real to wait for, the clock jumps to the next
timer's deadline: ``asyncio.sleep``, ``call_later``, ``wait_for`` and ``asyncio.timeout`` cost
no wall time, and which timer fires first depends only on the deadlines, never on how loaded
the machine is. *Something real to wait for* is a file descriptor registered with the selector
besides the loop's own wake-up pipe (a socket, a server, a subprocess pipe), or a job handed to
``loop.run_in_executor`` (``asyncio.to_thread``, ``getaddrinfo``) that has not finished. While
there is one the loop waits in real time, as asyncio does, and the virtual clock moves on by
the time it waited (:class:`ClockedSelector`): I/O keeps working, and a timeout racing with it
is as long as it says. Work handed to a thread any other way (a ``threading.Thread`` that calls
``call_soon_threadsafe``) is not seen: a timer may fire before it reports back; such a test
chooses ``clock="real"``.

Once a run is past its deadline in real time, the virtual clock runs at least as fast as the
real one (:meth:`VirtualClock.catch_up`): tasks that never let the loop idle (a busy
``await asyncio.sleep(0)`` loop) are still reported as hung, so pytest never hangs.

Each run but run 0 also jitters the timers its tasks set (:class:`TimerJitter`): some fire
late, by a fraction of their delay drawn from the run's seed (never early, as on a real loop),
so that timers due close together fire in either order and a deadline moves a little.
Only timers set from a worker's context are moved (:data:`JITTERED`): the run's own deadline
is not. One seed is one schedule: the draws follow the order in which the tasks, themselves
ordered from the seed, set their timers. A loop the plugin borrows (pytest-asyncio's) keeps the
real clock and its timers as they are: its fixtures set their timers on it before the run.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import selectors
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from pytest_concurrency.engine.seeds import derive_seed

VIRTUAL_EPOCH = 0.0
"""What ``loop.time()`` says on a fresh loop on the virtual clock."""
MIN_LATE_RATE = 0.1
MAX_LATE_RATE = 0.9
"""Bounds of a run's chance that a timer fires late (drawn uniformly per run)."""
MIN_LATENESS = 0.25
MAX_LATENESS = 1.0
"""Bounds of how late a late timer may fire, as a fraction of its delay (drawn per run): at
most twice its delay after it was set, and never early, as on a real loop."""

JITTERED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pytest_concurrency_timers_jittered", default=False
)
"""True in the context of a run's worker tasks (and the tasks they make): their timers move."""


class TimerMove(Protocol):
    def move(self, when: float, now: float) -> float:
        """The deadline a timer set at ``now`` for ``when`` gets instead."""


class ExactTimers:
    """Timers fire when they say (run 0, perturbation off, the real clock)."""

    def move(self, when: float, now: float) -> float:
        return when


EXACT = ExactTimers()


class TimerJitter:
    """Some timers late: each, with chance ``rate``, fires up to ``lateness`` times its delay
    after its deadline (uniformly), the others on time. A real loop's timers are never early,
    and a real call's latency has a tail: so a timer that the code expects to fire first may
    fire second, and a timeout may expire before the call it bounds returns."""

    def __init__(self, seed: int, rate: float, lateness: float) -> None:
        self.rate = rate
        self.lateness = lateness
        self.rng = random.Random(seed)

    def move(self, when: float, now: float) -> float:
        delay = when - now
        if delay <= 0 or self.rng.random() >= self.rate:
            return when
        return when + delay * self.rng.uniform(0.0, self.lateness)


def timers_for_run(run_index: int, seed: int) -> TimerMove:
    """Run 0: exact timers, as on the real clock; later runs: late timers drawn from the seed."""
    if run_index == 0:
        return EXACT
    rng = random.Random(derive_seed("timers", seed))
    rate = rng.uniform(MIN_LATE_RATE, MAX_LATE_RATE)
    return TimerJitter(derive_seed("late", seed), rate, rng.uniform(MIN_LATENESS, MAX_LATENESS))


def next_deadline(timers: list[asyncio.TimerHandle]) -> float | None:
    """The deadline of the first timer that is not cancelled (``timers`` is a heap)."""
    if timers and not timers[0].cancelled():
        return timers[0].when()
    live = [timer.when() for timer in timers if not timer.cancelled()]
    return min(live) if live else None


def threads_started_since(before: Collection[int | None]) -> bool:
    """A thread started since ``before`` was taken, other than the one asking (anyio's worker
    threads, a thread of the test's): it may call back through ``call_soon_threadsafe``, so
    the clock waits for it in real time rather than jump."""
    asking = threading.get_ident()
    return any(
        thread.ident not in before and thread.ident != asking for thread in threading.enumerate()
    )


class VirtualClock:
    """The time of one loop on the virtual clock (see the module's docstring)."""

    def __init__(self) -> None:
        self.now = VIRTUAL_EPOCH
        self.executor_jobs = 0

    def before_pass(self, ready: bool, real_waits: bool, timers: list[asyncio.TimerHandle]) -> None:
        """Jump to the next deadline when nothing is ready and nothing real is awaited."""
        if ready or real_waits:
            return
        deadline = next_deadline(timers)
        if deadline is not None and deadline > self.now:
            self.now = deadline

    def catch_up(self, floor: float) -> None:
        """Never behind ``floor`` (a run past its deadline: see the module's docstring)."""
        self.now = max(self.now, floor)

    def waited(self, seconds: float, timeout: float | None) -> None:
        """The loop waited ``seconds`` of real time for real I/O (at most ``timeout``)."""
        self.now += seconds if timeout is None else min(seconds, timeout)

    def track(self, job: asyncio.Future[Any]) -> None:
        """A job in the executor: real work the clock waits for until it is done."""
        self.executor_jobs += 1
        job.add_done_callback(self._job_done)

    def _job_done(self, job: asyncio.Future[Any]) -> None:
        self.executor_jobs -= 1


class ClockedSelector:
    """The loop's selector, whose waits for real I/O move the virtual clock on."""

    def __init__(
        self, inner: selectors.BaseSelector, clock: VirtualClock, real_waits: Callable[[], bool]
    ) -> None:
        self.inner = inner
        self.clock = clock
        self.real_waits = real_waits

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout == 0 or not self.real_waits():
            return self.inner.select(timeout)  # no real wait: idle until woken, or a poll
        started = time.monotonic()
        try:
            return self.inner.select(timeout)
        finally:
            self.clock.waited(time.monotonic() - started, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
