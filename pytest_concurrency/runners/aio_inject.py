"""asyncio mode's cancellation injection (``inject="cancel"``, opt-in): seeded cancellations at
the ``await`` points of a run's workers, and timeouts that expire early.

Code that updates state before an ``await`` and restores it after leaves it half-updated when
the task is cancelled at that ``await`` (a client gone, a caller's timeout). With injection on,
every run from 1 on (run 0 runs as without it) draws from its seed:

* one worker, and the resumption of that worker at which it is cancelled: when that step is
  ready, the loop cancels the task first, so ``CancelledError`` is raised at the ``await`` where
  it waits (:meth:`CancelPlan.arrange`). The step is drawn from 1 to one more than the most steps
  that worker has taken in an earlier run, so later runs reach deeper ``await`` points. A worker
  that ends with the injected ``CancelledError`` is not a failure: what the test checks after
  (the harness's check, a later run's) is;
* for each ``asyncio.timeout``/``wait_for`` timer set in the run, with even odds, a deadline
  at a seeded fraction of its delay: the timeout expires early, as when what it guards is slow.

Each injection is logged with the user's line where it happened (the ``await`` cancelled, the
``timeout``/``wait_for`` that expired early), and the log becomes the failing run's report lines.
One seed is one set of injections: the draws follow the schedule, itself drawn from the seed.
"""

from __future__ import annotations

import asyncio
import linecache
import os
import random
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from pytest_concurrency import messages
from pytest_concurrency.engine.aiorun import KIND_CANCEL, KIND_TIMEOUT, Injection
from pytest_concurrency.engine.context import CURRENT
from pytest_concurrency.engine.seeds import derive_seed
from pytest_concurrency.runners.aio_stacks import is_own_frame

INJECT_CANCEL = "cancel"
EARLY_TIMEOUT_CHANCE = 0.5


def is_user_frame(frame: FrameType) -> bool:
    return not is_own_frame(frame.f_code.co_filename)


def describe(frame: FrameType, lineno: int) -> str:
    """``file.py:12 in pay: await provider.charge(amount)``."""
    filename = frame.f_code.co_filename
    source = linecache.getline(filename, lineno).strip()
    where = f"{os.path.basename(filename)}:{lineno} in {frame.f_code.co_name}"
    return f"{where}: {source}" if source else where


Place = tuple[FrameType, int] | None
"""A user's frame and its line (None: no line of the code under test)."""


def awaiting_place(task: asyncio.Task[Any]) -> Place:
    """The innermost user frame where a suspended task waits (its ``await``)."""
    found: Place = None
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        if is_user_frame(frame):
            found = (frame, frame.f_lineno)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return found


def calling_place() -> Place:
    """The innermost user frame on the current stack (where a timeout was set)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if is_user_frame(frame):
            return (frame, frame.f_lineno)
        frame = frame.f_back
    return None


def describe_place(place: Place) -> str:
    return describe(*place) if place is not None else messages.INJECTED_AT_UNKNOWN


def injection_at(place: Place, run: int, worker: int, kind: str) -> Injection:
    filename, lineno = (place[0].f_code.co_filename, place[1]) if place else ("", 0)
    return Injection(run=run, worker=worker, file=filename, line=lineno, kind=kind)


def is_timeout_callback(callback: Callable[..., object]) -> bool:
    """The timer of ``asyncio.timeout`` (3.11+) or of ``wait_for`` (3.10, 3.11)."""
    owner = getattr(callback, "__self__", None)
    timeouts = sys.modules.get("asyncio.timeouts")
    if timeouts is not None and isinstance(owner, timeouts.Timeout):
        return True
    return getattr(callback, "__name__", "") == "_release_waiter"


@dataclass
class CancelPlan:
    """The injections of one run (see the module's docstring)."""

    seed: int
    worker: int
    at_step: int
    early_timeouts: bool = True
    run: int = 0
    tasks: dict[asyncio.Task[Any], int] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)
    seen: set[asyncio.Handle] = field(default_factory=set)
    cancelled: set[int] = field(default_factory=set)
    log: list[str] = field(default_factory=list)
    injected: list[Injection] = field(default_factory=list)  # the log, as the JSON has it

    def __post_init__(self) -> None:
        self.rng = random.Random(derive_seed("early-timeouts", self.seed))

    def arrange(self, ready: deque[asyncio.Handle]) -> None:
        """Count the ready steps of the run's workers; cancel the chosen one at its step."""
        for handle in tuple(ready):  # a snapshot: call_soon_threadsafe may append meanwhile
            task = getattr(getattr(handle, "_callback", None), "__self__", None)
            worker = self.tasks.get(task) if isinstance(task, asyncio.Task) else None
            if worker is None or task is None or handle.cancelled() or handle in self.seen:
                continue
            self.seen.add(handle)  # a step held back and brought back is one step
            self.steps[worker] = self.steps.get(worker, 0) + 1
            if worker == self.worker and self.steps[worker] == self.at_step and not task.done():
                self._cancel(worker, task)

    def _cancel(self, worker: int, task: asyncio.Task[Any]) -> None:
        """Cancel a worker whose step is ready: ``CancelledError`` is raised at its ``await``."""
        place = awaiting_place(task)
        self.log.append(messages.INJECTED_CANCEL.format(worker=worker, where=describe_place(place)))
        self.injected.append(injection_at(place, self.run, worker, KIND_CANCEL))
        self.cancelled.add(worker)
        task.cancel()

    def move_timeout(
        self, when: float, now: float, callback: Callable[..., object]
    ) -> tuple[float, Callable[..., object]]:
        """An ``asyncio.timeout``/``wait_for`` deadline, early with even odds: the new deadline,
        and a callback that logs the early expiry when it fires (a timeout cancelled first,
        because what it guards finished in time, is not logged)."""
        delay = when - now
        if not self.early_timeouts or delay <= 0 or not is_timeout_callback(callback):
            return when, callback
        if self.rng.random() >= EARLY_TIMEOUT_CHANCE:
            return when, callback
        early = delay * self.rng.random()
        place = calling_place()
        line = messages.INJECTED_TIMEOUT.format(
            where=describe_place(place), after=early, delay=delay
        )
        context = CURRENT.get()
        injected = injection_at(
            place, self.run, -1 if context is None else context.worker, KIND_TIMEOUT
        )

        def expire_early(*args: Any) -> None:
            self.log.append(line)
            self.injected.append(injected)
            callback(*args)

        return now + early, expire_early


@dataclass
class CancelInjection:
    """Injection across a series: the plan of each run, and the most steps seen per worker."""

    most_steps: dict[int, int] = field(default_factory=dict)

    def plan_for_run(self, run_index: int, seed: int, workers: int) -> CancelPlan:
        """Run 0 only counts the steps of each worker (``worker=-1``: no injection)."""
        if run_index == 0:
            return CancelPlan(seed, worker=-1, at_step=0, early_timeouts=False, run=run_index)
        rng = random.Random(derive_seed("inject", seed))
        worker = rng.randrange(workers)
        at_step = rng.randint(2, self.most_steps.get(worker, 1) + 1)
        return CancelPlan(seed, worker, at_step, run=run_index)

    def run_done(self, plan: CancelPlan) -> None:
        for worker, count in plan.steps.items():
            self.most_steps[worker] = max(self.most_steps.get(worker, 0), count)
