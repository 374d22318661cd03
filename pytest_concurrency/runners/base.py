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


@dataclass(frozen=True)
class RunPlan:
    """Which runs a series makes: a count, a deadline (``--concurrency-budget``), or both."""

    count: int | None
    deadline: float | None = None
    first_index: int = 0

    def __post_init__(self) -> None:
        if self.count is None and self.deadline is None:
            raise ValueError("a run plan needs a count or a deadline")

    def has_run(self, index: int) -> bool:
        if self.count is not None and index >= self.first_index + self.count:
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
