"""The one small interface every mode implements: run a series of runs of N calls at once.

A *call* is a zero-argument callable (the test body with its fixture values bound, or a
harness callable). A *run* starts every call together, waits for all of them, and yields a
:class:`~pytest_concurrency.engine.outcomes.RunRecord`. A *series* repeats runs until its plan is
done or the caller says stop (for instance at the first failing run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pytest_concurrency.engine.outcomes import CallFailure, RunRecord
from pytest_concurrency.errors import BarrierAborted

WorkerCall = Callable[[], object]
RunDone = Callable[[RunRecord], bool]
"""Called once per finished run; returns True to go on with the next run."""


THREAD_MARGIN = 1.0
PROCESS_MARGIN = 1.5
"""Seconds kept for the stacks and the report before pytest-timeout strikes (processes send
their stacks through files); at most half of a shorter timeout."""
MIN_HANG_WAIT = 0.25
"""A run that starts later than this before the outer deadline's hang time (the first run,
after a long setup or a slow start of the process pool) is left to pytest-timeout."""


@dataclass(frozen=True)
class OuterDeadline:
    """pytest-timeout's deadline for the whole test (``at``, monotonic seconds), as the runs
    see it: a run still going at :attr:`hang_at` is reported hung, which leaves ``margin``
    seconds for the workers' stacks and the report before pytest-timeout strikes; no run
    starts after :attr:`last_start` (half a margin earlier), so that a healthy run in progress
    is not taken for a hung one."""

    at: float
    margin: float

    @classmethod
    def for_mode(cls, at: float, seconds: float, one_worker_per_core: bool) -> OuterDeadline:
        fixed = PROCESS_MARGIN if one_worker_per_core else THREAD_MARGIN
        return cls(at, min(fixed, seconds / 2))

    @property
    def hang_at(self) -> float:
        return self.at - self.margin

    @property
    def last_start(self) -> float:
        return self.hang_at - self.margin / 2

    def wait_out(self, step: float = 0.05) -> None:
        """Sleep until a little after ``at``: the series stopped for pytest-timeout, whose
        failure then lands here, in a sleep, not inside pytest's or the plugin's report."""
        __tracebackhide__ = True  # pytest's: the failure points at the test, not here
        end = self.at + self.margin
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(step, left))


@dataclass(frozen=True)
class RunPlan:
    """Which runs a series makes: a count, a deadline (``--concurrency-budget``), or both;
    under pytest-timeout, none starts after its ``outer`` deadline's last start."""

    count: int | None
    deadline: float | None = None
    first_index: int = 0
    outer: OuterDeadline | None = None

    def __post_init__(self) -> None:
        if self.count is None and self.deadline is None:
            raise ValueError("a run plan needs a count or a deadline")

    def has_run(self, index: int) -> bool:
        if self.count is not None and index >= self.first_index + self.count:
            return False
        if index == self.first_index:
            return True
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            return False
        return not self.cut_by_outer(now)

    def stopped_for_outer(self, runs_done: int) -> bool:
        """Did the series end because the outer deadline neared, not because its count or its
        budget was done? Then pytest-timeout is about to end the test."""
        outer = self.outer
        if outer is None or not self.cut_by_outer():
            return False
        if self.count is not None and runs_done >= self.count:
            return False
        return self.deadline is None or self.deadline > outer.last_start

    def cut_by_outer(self, now: float | None = None) -> bool:
        """Has the outer deadline's last start passed (the series stops for pytest-timeout)?"""
        if self.outer is None:
            return False
        return (time.monotonic() if now is None else now) >= self.outer.last_start


@dataclass(frozen=True)
class Series:
    """Everything a runner needs to make a series of runs."""

    calls: Sequence[WorkerCall]
    plan: RunPlan
    seed: int
    timeout: float
    on_run_done: RunDone
    keep_results: bool = False

    @property
    def workers(self) -> int:
        return len(self.calls)

    def run_deadline(self, started: float) -> float:
        """When a run started at ``started`` is hung: after ``timeout``, or at the outer
        deadline's :attr:`~OuterDeadline.hang_at`, whichever comes first."""
        deadline = started + self.timeout
        outer = self.plan.outer
        if outer is None or outer.hang_at - started < MIN_HANG_WAIT:  # after a long setup
            return deadline  # no time left to call it hung: pytest-timeout's call
        return min(deadline, outer.hang_at)


class Runner(Protocol):
    """A mode: threads, processes or asyncio."""

    mode: str

    def run_series(self, series: Series) -> None:
        """Make the runs of ``series``, reporting each through ``series.on_run_done``."""

    def close(self) -> None:
        """Stop every worker; never leave a thread, task or process behind."""


class AsyncRunner(Runner, Protocol):
    """A mode that can also run a series on the caller's event loop (asyncio)."""

    async def run_series_async(self, series: Series) -> None:
        """Like ``run_series``, awaited from a coroutine running on the mode's own loop."""


def is_collateral(failure: CallFailure) -> bool:
    """Did this call give up at ``concurrency.barrier()`` because another one failed?"""
    exc_type = failure.origin.exc_type
    return exc_type == BarrierAborted.__qualname__ or exc_type.endswith(".BarrierAborted")


def set_collateral_apart(record: RunRecord) -> None:
    """Calls that gave up at the barrier are consequences of the run's real failures: when
    there are real ones, count them apart (``record.collateral``), never in their place. When
    every failure is one (a worker never reached the barrier), they are the failure."""
    collateral = [failure for failure in record.failures if is_collateral(failure)]
    if collateral and len(collateral) < len(record.failures):
        record.failures = [failure for failure in record.failures if not is_collateral(failure)]
        record.collateral.extend(collateral)
