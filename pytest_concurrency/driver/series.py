"""Drive a series of runs and turn its outcome into what pytest shows.

Shared by the ``concurrent`` marker (the test body is the call) and the explicit harness
(``for run in concurrency.runs(N): run(fn, workers=8)``). Pure module: no pytest import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from types import TracebackType

from pytest_concurrency.engine.outcomes import (
    CallKind,
    RunRecord,
    SeriesOutcome,
    add_note,
    classify,
    group_failures,
    is_outside_interrupt,
    without_traceback,
)
from pytest_concurrency.engine.report import failure_report
from pytest_concurrency.errors import ConcurrencyFailure
from pytest_concurrency.runners.base import (
    AsyncRunner,
    Runner,
    RunPlan,
    Series,
    WorkerCall,
    explain_failure,
)

if sys.version_info >= (3, 11):
    BaseGroup = BaseExceptionGroup  # noqa: F821
    Group = ExceptionGroup  # noqa: F821
else:  # pragma: no cover - Python 3.10
    from exceptiongroup import (  # type: ignore[import-not-found,unused-ignore]
        BaseExceptionGroup as BaseGroup,
    )
    from exceptiongroup import (  # type: ignore[import-not-found,unused-ignore]
        ExceptionGroup as Group,
    )


GROUP_TITLE = "{count} distinct failures in run {run} of a concurrent test"


def account(outcome: SeriesOutcome, record: RunRecord) -> bool:
    """Count a finished run into the outcome; True while the series should go on."""
    outcome.runs_done += 1
    outcome.calls += record.workers
    outcome.signals.extend(record.signals)
    if record.data_races:
        outcome.add_data_races(record.data_races)
    if record.loop is not None:
        outcome.clock = record.loop.clock
    if record.interrupt is not None:
        outcome.interrupt = record.interrupt
    if record.failed:
        outcome.failing_run = record
        return False
    return record.interrupt is None


def run_series(
    runner: Runner,
    calls: Sequence[WorkerCall],
    *,
    outcome: SeriesOutcome,
    plan: RunPlan,
    timeout: float,
    keep_results: bool = False,
    on_record: Callable[[RunRecord], None] | None = None,
    rerun_failure: bool = False,
) -> RunRecord | None:
    """Run ``plan`` on ``runner``; return the last record (with results if kept). A failing
    run gets what the runner can tell about it (:func:`explain_failure`), from a rerun of the
    calls with ``rerun_failure`` (the marker's series, whose calls are the whole test)."""
    __tracebackhide__ = True
    with AccountedSeries(calls, outcome, plan, timeout, keep_results, on_record) as accounted:
        runner.run_series(accounted.series)
        accounted.explain_failure(runner, rerun_failure)
    return accounted.last


async def run_series_async(
    runner: AsyncRunner,
    calls: Sequence[WorkerCall],
    *,
    outcome: SeriesOutcome,
    plan: RunPlan,
    timeout: float,
    keep_results: bool = False,
) -> RunRecord | None:
    """:func:`run_series` on the caller's event loop (asyncio mode, from an async test)."""
    __tracebackhide__ = True
    with AccountedSeries(calls, outcome, plan, timeout, keep_results) as accounted:
        await runner.run_series_async(accounted.series)
        accounted.explain_failure(runner, rerun=False)  # no blocking rerun on this loop
    return accounted.last


def interrupted(outcome: SeriesOutcome, exc: BaseException) -> BaseException:
    """The series was cut by what was raised into the controlling thread (pytest-timeout's
    failure, Ctrl-C): the runs done so far stand, and the report says what cut them.

    pytest-timeout's ``Failed`` comes back without its traceback, which holds only the
    runner's waits and the standard library's below them.
    """
    if outcome.interrupt is None:
        outcome.interrupt = exc
    return without_traceback(exc)


class AccountedSeries:
    """What :func:`run_series` and :func:`run_series_async` share: a :class:`Series` whose
    finished runs are counted into ``outcome`` (:attr:`last` is the last record), and, around
    the runner's call (``with``), an interrupt from outside kept as the series' outcome and
    re-raised without its traceback (:func:`interrupted`); any other exception passes as is."""

    def __init__(
        self,
        calls: Sequence[WorkerCall],
        outcome: SeriesOutcome,
        plan: RunPlan,
        timeout: float,
        keep_results: bool = False,
        on_record: Callable[[RunRecord], None] | None = None,
    ) -> None:
        self.outcome = outcome
        self.on_record = on_record
        self.last: RunRecord | None = None
        self.series = Series(
            calls=calls,
            plan=plan,
            seed=outcome.seed,
            timeout=timeout,
            on_run_done=self.on_run_done,
            keep_results=keep_results,
        )

    def on_run_done(self, record: RunRecord) -> bool:
        self.last = record
        if self.on_record is not None:
            self.on_record(record)
        return account(self.outcome, record)

    def explain_failure(self, runner: Runner, rerun: bool) -> None:
        """The series' failing run, if this series made it and nothing cut it short: the
        runner's explanation in its notes."""
        record = self.last
        cut = self.outcome.interrupt is not None
        if record is not None and record is self.outcome.failing_run and not cut:
            explain_failure(runner, self.series, record, rerun)

    def __enter__(self) -> AccountedSeries:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        __tracebackhide__ = True
        if exc is not None and is_outside_interrupt(exc):
            raise interrupted(self.outcome, exc)  # the same exception, its traceback trimmed
        # anything else propagates unchanged


def failure_exception(
    outcome: SeriesOutcome, *, timeout: float, reproduce: str, seed: int
) -> BaseException:
    """The exception that fails the test: the user's own, or a group of several, with notes."""
    record = outcome.failing_run
    assert record is not None
    groups = group_failures(record.failures)
    firsts = [group.first.exception for group in groups]
    live = [exc for exc in firsts if exc is not None]
    text = "\n".join(failure_report(outcome, timeout=timeout, reproduce=reproduce, seed=seed))
    exc: BaseException
    if not live:
        exc = ConcurrencyFailure(text)
        exc.__suppress_context__ = True
        return exc
    if len(live) == 1:
        exc = live[0]
    elif all(isinstance(item, Exception) for item in live):
        # The group borrows the first failure's traceback so that it starts in user code.
        exc = Group(
            GROUP_TITLE.format(count=len(live), run=record.index),
            [item for item in live if isinstance(item, Exception)],
        )
    else:
        exc = BaseGroup(GROUP_TITLE.format(count=len(live), run=record.index), live)
    if exc is not live[0]:
        exc = exc.with_traceback(live[0].__traceback__)
    add_note(exc, text)
    return exc


def outcome_signal(outcome: SeriesOutcome) -> BaseException | None:
    """A skip or xfail raised by a worker, shown only when nothing failed."""
    for _, signal in outcome.signals:
        if classify(signal) in (CallKind.SKIPPED, CallKind.XFAILED):
            return signal
    return None
