"""asyncio mode: N tasks per run on the plugin's own event loop, scheduled from the seed.

:class:`AsyncioRunner` makes each run's tasks on a
:class:`~pytest_concurrency.runners.aio_loop.ScheduledEventLoop`, which orders the ready task
steps from the run's index and seed (FIFO in every run with ``perturb=False``), hosted in a
thread of its own (:class:`~pytest_concurrency.runners.aio_loop.LoopHost`) unless the caller
already runs on it (an ``async def`` test that drives the harness, :func:`run_test_coroutine`).
Given a ``loop`` (pytest-asyncio's, which ran the test's async fixtures), the runner borrows
that loop instead (:class:`~pytest_concurrency.runners.aio_loop.AdoptedLoop`): same thread,
same watch, the same seeded order of ready task steps when it is one of asyncio's own loops.
Tasks that outlive the run's deadline are cancelled with their stacks recorded; a loop that a
synchronous call blocks is reported and abandoned, so pytest never hangs.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pytest_concurrency import messages
from pytest_concurrency.engine import aiorun
from pytest_concurrency.engine.aiorun import LoopRun
from pytest_concurrency.engine.context import CURRENT, WorkerContext
from pytest_concurrency.engine.outcomes import CallFailure, CallKind, RunRecord, classify
from pytest_concurrency.engine.seeds import run_seed
from pytest_concurrency.errors import BarrierAborted, ConcurrencyUsageError, LoopBlocked
from pytest_concurrency.races.perturb import NO_PERTURBATION, Perturbation
from pytest_concurrency.runners.aio_clock import EXACT, JITTERED, timers_for_run
from pytest_concurrency.runners.aio_inject import INJECT_CANCEL, CancelInjection, CancelPlan
from pytest_concurrency.runners.aio_loop import (
    CANCEL_SECONDS,
    FIFO,
    LoopHost,
    LoopSchedule,
    RunWatch,
    ScheduledEventLoop,
    order_for_run,
    schedule_of,
    task_stack,
)
from pytest_concurrency.runners.aio_rerun import judge_failing_run
from pytest_concurrency.runners.aio_trace import StepTrace
from pytest_concurrency.runners.base import Series, set_collateral_apart

__tracebackhide__ = True  # every frame here is the plugin's: pytest leaves them out

MODE = "asyncio"
VIRTUAL = aiorun.VIRTUAL
"""The clock of the plugin's own loop by default (``runners/aio_clock.py``); "real": asyncio's."""
REAL = aiorun.REAL
TRACE_STEPS = True
"""Keep each run's steps for its failure report (``runners/aio_trace.py``); an arm of
``benchmarks/asyncio_overhead.py`` turns it off to measure what it costs."""


# -- the barrier of concurrency.barrier() ---------------------------------------------------------


class TaskBarrier:
    """``await concurrency.barrier()`` for the tasks of one run; reusable, with a deadline."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.gate: asyncio.Future[None] | None = None
        self.broken = False

    async def wait(self, timeout: float | None) -> None:
        if self.broken:
            raise BarrierAborted(messages.BARRIER_ABORTED)
        if self.gate is None:
            self.gate = asyncio.get_running_loop().create_future()
        gate = self.gate
        self.arrived += 1
        if self.arrived == self.parties:
            self.arrived, self.gate = 0, None
            gate.set_result(None)
            return
        await asyncio.wait({gate}, timeout=timeout)
        if not gate.done() or gate.cancelled():
            self.abort()
            raise BarrierAborted(messages.BARRIER_ABORTED)

    def leave(self) -> None:
        """A worker that will not come (cancelled by injection): the others need not wait."""
        self.parties -= 1
        if self.gate is not None and self.arrived >= self.parties:
            gate, self.arrived, self.gate = self.gate, 0, None
            if not gate.done():
                gate.set_result(None)

    def abort(self) -> None:
        self.broken = True
        if self.gate is not None and not self.gate.done():
            self.gate.cancel()


# -- the runner -----------------------------------------------------------------------------------


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def callable_name(call: Callable[..., Any]) -> str:
    inner: Any = call
    while hasattr(inner, "func"):
        inner = inner.func
    return str(getattr(inner, "__qualname__", repr(inner)))


class AsyncioRunner:
    """Runs series of runs as tasks on a
    :class:`~pytest_concurrency.runners.aio_loop.ScheduledEventLoop`, or on ``loop``, borrowed."""

    mode = MODE

    def __init__(
        self,
        workers: int,
        *,
        perturb: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: str = VIRTUAL,
        inject: str = "off",
    ) -> None:
        self.workers = workers
        self.perturb = perturb  # False (perturb=False): every run keeps FIFO order
        self.loop = loop  # a loop to borrow (the fixtures' one); None: the plugin's own
        self.virtual = clock == VIRTUAL  # the plugin's own loop only: a borrowed one is real
        self.injection = CancelInjection() if inject == INJECT_CANCEL else None
        self._plan: CancelPlan | None = None  # the injections of the run in progress
        self._host: LoopHost | None = None
        self._usage_error: ConcurrencyUsageError | None = None
        self._abandoned: list[threading.Thread] = []

    # -- from a synchronous caller (the marker, a sync harness test) ---------------------------

    def run_series(self, series: Series) -> None:
        if running_loop() is not None:
            raise ConcurrencyUsageError(messages.RUN_NOT_AWAITED)
        if self._host is None or self._host.abandoned:
            self._host = LoopHost(self.loop, virtual=self.virtual)
        host = self._host
        try:
            host.run(self.run_series_async(series))
        except LoopBlocked:
            self._host = None  # the record went to series.on_run_done from the watcher
            self._abandoned.append(host.thread)
            if host.adopted is not None:
                host.close()  # a borrowed loop goes back to its owner all the same (bounded)
        finally:
            if self.loop is not None and self._host is not None:
                self.close()  # borrowed: handed back after every series, its owner runs it next

    def close(self) -> None:
        host, self._host = self._host, None
        if host is not None:
            host.close()
            if host.abandoned:
                self._abandoned.append(host.thread)

    @property
    def abandoned_threads(self) -> list[threading.Thread]:
        return [thread for thread in self._abandoned if thread.is_alive()]

    # -- on the loop --------------------------------------------------------------------------

    async def run_series_async(self, series: Series) -> None:
        """Make the runs of ``series`` as tasks of the running loop (which must be ours, or
        one the plugin borrows right now)."""
        loop = asyncio.get_running_loop()
        schedule = schedule_of(loop)
        if schedule is None:
            raise ConcurrencyUsageError(messages.FOREIGN_EVENT_LOOP.format(loop=type(loop)))
        if series.workers != self.workers:
            raise ValueError(f"this runner has {self.workers} workers, the series {series.workers}")
        index = series.plan.first_index
        while series.plan.has_run(index):
            watch = await self._one_run(loop, schedule, series, index)
            error, self._usage_error = self._usage_error, None
            if error is not None:
                raise error
            if not watch.claim():
                return  # reported as a blocked loop by the waiting thread
            record = watch.record
            set_collateral_apart(record)
            go_on = series.on_run_done(record)
            if not go_on or record.interrupt is not None or record.hung_workers:
                return
            index += 1

    async def _one_run(
        self,
        loop: asyncio.AbstractEventLoop,
        schedule: LoopSchedule,
        series: Series,
        index: int,
    ) -> RunWatch:
        seed = run_seed(series.seed, index)
        record = RunRecord(
            index=index,
            seed=seed,
            workers=self.workers,
            results=[None] * self.workers if series.keep_results else [],
        )
        barrier = TaskBarrier(self.workers)
        started = time.monotonic()
        allowed = series.run_deadline(started) - started
        watch = RunWatch(record, {}, started, allowed, series.on_run_done, loop.time())
        schedule.use_order(order_for_run(index, seed) if self.perturb else FIFO)
        schedule.use_timers(timers_for_run(index, seed) if self.perturb else EXACT)
        plan = self._plan = (
            self.injection.plan_for_run(index, seed, self.workers)
            if (self.injection is not None)
            else None
        )
        schedule.use_injection(plan)
        facts = self._facts(loop, schedule, index)
        trace = StepTrace(index, loop.time()) if TRACE_STEPS else None
        schedule.use_trace(trace)
        schedule.watch = watch
        try:
            for worker in range(self.workers):
                task = loop.create_task(self._call(worker, record, series, barrier))
                watch.tasks[task] = worker
            if trace is not None:
                trace.tasks = watch.tasks
            if plan is not None:
                plan.tasks = watch.tasks
            _, pending = await asyncio.wait(watch.tasks, timeout=max(0.0, allowed))
            if not pending:
                series.run_finished(started)
            if pending:
                record.hung_after = allowed
                await self._give_up_on(record, pending, watch.tasks, series)
        finally:
            schedule.use_order(FIFO)
            schedule.use_timers(EXACT)
            schedule.use_injection(None)
            schedule.use_trace(None)
            schedule.watch = None
            if plan is not None and self.injection is not None:
                record.notes.extend(plan.log)
                facts.injections.extend(plan.injected)
                self.injection.run_done(plan)
            self._plan = None
            facts.seconds = loop.time() - watch.clock_started
            record.loop = facts
            if trace is not None:
                self._explain(record, trace, facts)
        return watch

    def _facts(
        self, loop: asyncio.AbstractEventLoop, schedule: LoopSchedule, index: int
    ) -> LoopRun:
        """What this run changes from plain asyncio: the clock, the order, the timers."""
        virtual = isinstance(loop, ScheduledEventLoop) and loop.clock is not None
        ordered = self.perturb and index > 0 and getattr(schedule, "orders_tasks", True)
        return LoopRun(
            clock=VIRTUAL if virtual else REAL,
            reordered_tasks=ordered,
            late_timers=self.perturb and index > 0 and virtual,
        )

    def _explain(self, record: RunRecord, trace: StepTrace, facts: LoopRun) -> None:
        """A failed run's report gets its steps; a passing one keeps them for a harness check
        that fails after it (text only when asked), with what plain order is judged from."""
        if record.failures or record.hung_workers:
            record.notes.extend(trace.lines())
        else:
            record.explain = lambda: [
                *trace.lines(),
                *facts.judged_without_rerun(messages.RERUN_SKIPPED_HARNESS),
            ]

    def explain_failure(self, series: Series, record: RunRecord, rerun: bool) -> None:
        """Whether ``record``'s failure also happens without reordering: from a rerun in FIFO
        order on the real clock when ``rerun`` (the marker's series; ``runners/aio_rerun.py``
        says when it is made), else from what the runs showed."""
        plain = AsyncioRunner(self.workers, perturb=False, loop=self.loop, clock=REAL)
        try:
            judge_failing_run(series, record, plain if rerun else None)
        finally:
            plain.close()
            self._abandoned.extend(plain.abandoned_threads)

    async def _call(
        self, worker: int, record: RunRecord, series: Series, barrier: TaskBarrier
    ) -> None:
        JITTERED.set(True)  # the timers this task (and those it makes) sets move in this run
        CURRENT.set(
            WorkerContext(
                worker=worker,
                run=record.index,
                workers=self.workers,
                mode=MODE,
                seed=record.seed,
                wait_at_barrier=barrier.wait,
            )
        )
        call = series.calls[worker]
        try:
            awaitable = call()
            if not inspect.isawaitable(awaitable):
                self._sync_call(call, awaitable, barrier)
                return
            result = await awaitable
        except BaseException as exc:  # every failure is kept, none is lost
            if record.hung_workers and isinstance(exc, asyncio.CancelledError):
                raise  # cancelled by _give_up_on: the hang is the failure
            plan = self._plan
            if isinstance(exc, asyncio.CancelledError) and plan and worker in plan.cancelled:
                barrier.leave()  # cancelled by injection: what the test checks says the rest
                return
            if exc.__traceback__ is not None:  # start the traceback in the user's code
                exc.__traceback__ = exc.__traceback__.tb_next
            self._record_exception(record, worker, exc, barrier)
        else:
            if series.keep_results:
                record.results[worker] = result

    def _sync_call(self, call: Callable[[], object], value: object, barrier: TaskBarrier) -> None:
        barrier.abort()
        if self._usage_error is None:
            self._usage_error = ConcurrencyUsageError(
                messages.SYNC_CALL_IN_ASYNCIO.format(
                    name=callable_name(call), type=type(value).__qualname__
                )
            )

    def _record_exception(
        self, record: RunRecord, worker: int, exc: BaseException, barrier: TaskBarrier
    ) -> None:
        kind = classify(exc)
        if kind is CallKind.FAILED:
            record.failures.append(CallFailure.from_exception(exc, worker=worker, run=record.index))
            barrier.abort()
        elif kind is CallKind.INTERRUPTED:
            record.interrupt = exc
            barrier.abort()
        else:
            record.signals.append((worker, exc))

    async def _give_up_on(
        self,
        record: RunRecord,
        pending: set[asyncio.Task[None]],
        tasks: dict[asyncio.Task[None], int],
        series: Series,
    ) -> None:
        """Tasks past the deadline: record where each waits, then cancel them (near
        pytest-timeout's deadline, waiting for them half of the margin left at most)."""
        record.hung_workers = sorted(tasks[task] for task in pending)
        for task in pending:
            record.stacks[tasks[task]] = task_stack(task)
            task.cancel()
        wait = CANCEL_SECONDS
        outer = series.plan.outer
        if outer is not None:
            wait = max(0.05, min(wait, outer.hang_at + outer.margin / 2 - time.monotonic()))
        await asyncio.wait(pending, timeout=wait)


# -- an async test that drives the harness ------------------------------------------------------


def run_test_coroutine(
    function: Callable[[], Awaitable[Any]],
    loop: asyncio.AbstractEventLoop | None = None,
    clock: str = VIRTUAL,
) -> None:
    """Run an ``async def`` test body once on a fresh plugin loop (the harness runs inside),
    on the ``clock`` given, or on ``loop``, borrowed (pytest-asyncio's, which ran the test's
    async fixtures: on its own clock)."""
    host = LoopHost(loop, virtual=clock == VIRTUAL)

    async def body() -> None:
        await function()

    try:
        host.run(body())
    finally:
        host.close()


def build_runner(
    workers: int, perturbation: Perturbation, options: dict[str, Any]
) -> AsyncioRunner:
    """The registry's entry for asyncio mode: its seeded task orders are its schedule
    perturbation, off (FIFO) with ``perturb=False``."""
    return AsyncioRunner(workers, perturb=perturbation is not NO_PERTURBATION, **options)
