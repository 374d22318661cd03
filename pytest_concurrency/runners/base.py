"""The one small interface every mode implements: run a series of runs of N calls at once.

A *call* is a zero-argument callable (the test body with its fixture values bound, or a
harness callable). A *run* starts every call together, waits for all of them, and yields a
:class:`~pytest_concurrency.engine.outcomes.RunRecord`. A *series* repeats runs until its plan is
done or the caller says stop (for instance at the first failing run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
"""Less than this between a run's expected end and the hang time, and the run is left to
pytest-timeout: there is no telling a hung run from a healthy one then."""
PACE_FACTOR = 2.0
"""A run is expected to take at most this many times the longest run of the test so far."""


@dataclass
class RunPace:
    """How long the test's runs take: the longest so far, in seconds."""

    longest: float = 0.0

    def ran(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)


@dataclass(frozen=True)
class OuterDeadline:
    """pytest-timeout's deadline for the whole test (``at``, monotonic seconds), as the runs
    see it: a run still going at :attr:`hang_at` is reported hung, which leaves ``margin``
    seconds for the workers' stacks and the report before pytest-timeout strikes. Only a run
    expected to end well before then (by the test's :class:`RunPace`) is held to it: a healthy
    run that would straddle it is left to pytest-timeout, as it would be without the plugin."""

    at: float
    margin: float
    pace: RunPace = field(default_factory=RunPace, compare=False)

    @classmethod
    def for_mode(cls, at: float, seconds: float, separate_processes: bool) -> OuterDeadline:
        fixed = PROCESS_MARGIN if separate_processes else THREAD_MARGIN
        return cls(at, min(fixed, seconds / 2))

    @property
    def hang_at(self) -> float:
        return self.at - self.margin

    def run_deadline(self, started: float, timeout: float) -> float:
        """When a run started at ``started`` (and given ``timeout``) is hung."""
        deadline = started + timeout
        expected_end = started + PACE_FACTOR * self.pace.longest
        if expected_end > self.hang_at - MIN_HANG_WAIT:
            return deadline  # no telling a hang from a healthy run: pytest-timeout's call
        return min(deadline, self.hang_at)


@dataclass(frozen=True)
class RunPlan:
    """Which runs a series makes: a count, a deadline (``--concurrency-budget``), or both;
    and pytest-timeout's deadline for the test, if it has one."""

    count: int | None
    deadline: float | None = None
    first_index: int = 0
    outer: OuterDeadline | None = None
    more: Callable[[], bool] | None = None
    """Asked before each run after the first: False ends the series (an audit's allowance
    is spent, see engine/audit.py)."""

    def __post_init__(self) -> None:
        if self.count is None and self.deadline is None:
            raise ValueError("a run plan needs a count or a deadline")

    def has_run(self, index: int) -> bool:
        if self.count is not None and index >= self.first_index + self.count:
            return False
        if index > self.first_index and self.more is not None and not self.more():
            return False
        return not (
            self.deadline is not None
            and index > self.first_index
            and time.monotonic() >= self.deadline
        )


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
        """When a run started at ``started`` is hung: after ``timeout``, or a margin before
        pytest-timeout's deadline when the run should be long over by then."""
        outer = self.plan.outer
        if outer is None:
            return started + self.timeout
        return outer.run_deadline(started, self.timeout)

    def run_finished(self, started: float) -> None:
        """A run that started at ``started`` is over: its time joins the test's pace."""
        outer = self.plan.outer
        if outer is not None:
            outer.pace.ran(time.monotonic() - started)


class Runner(Protocol):
    """A mode: threads, processes or asyncio."""

    mode: str

    def run_series(self, series: Series) -> None:
        """Make the runs of ``series``, reporting each through ``series.on_run_done``."""

    def close(self) -> None:
        """Stop every worker; never leave a thread, task or process behind."""


def loop_started(runner: Runner) -> None:
    """One-run series of a harness loop follow on ``runner``: let it keep what it sets up per
    series (the thread runner's perturbation) until :func:`loop_finished` or its ``close``.
    A runner without ``loop_started`` sets up per series as always."""
    method = getattr(runner, "loop_started", None)
    if method is not None:
        method()


def loop_finished(runner: Runner) -> None:
    """The loop is over: the runner releases what :func:`loop_started` let it keep."""
    method = getattr(runner, "loop_finished", None)
    if method is not None:
        method()


def explain_failure(runner: Runner, series: Series, record: RunRecord, rerun: bool) -> None:
    """``record`` failed and ends ``series``: let the runner add what it can tell about the
    failure to its notes (asyncio: whether it also fails in plain order, from a rerun of the
    calls when ``rerun``). A runner without ``explain_failure`` adds nothing."""
    method = getattr(runner, "explain_failure", None)
    if method is not None:
        method(series, record, rerun)


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
