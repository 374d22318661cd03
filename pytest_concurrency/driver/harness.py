"""The ``concurrency`` fixture: who am I, a barrier, and the explicit stress harness.

Inside a concurrent body, ``.worker`` and ``.run`` say which worker and run this call is.
Between runs, the harness gives fresh state and a check after every run::

    for run in concurrency.runs(1000):
        Registry._instance = None              # per-run setup, single-threaded
        got = run(Registry.get, workers=8)     # all 8 start together; results in worker order
        assert len({id(x) for x in got}) == 1  # per-run check, after every worker joined

Pure module: no pytest import (the plugin builds the fixture and turns errors into pytest's).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, cast

from pytest_concurrency import messages
from pytest_concurrency.driver.series import (
    failure_exception,
    outcome_signal,
    run_series,
    run_series_async,
)
from pytest_concurrency.engine.aiorun import LoopRun
from pytest_concurrency.engine.context import WorkerContext, current
from pytest_concurrency.engine.modes import NAMES as MODES
from pytest_concurrency.engine.modes import mode_of
from pytest_concurrency.engine.outcomes import RunRecord, SeriesOutcome
from pytest_concurrency.errors import ConcurrencyUsageError
from pytest_concurrency.runners.base import (
    AsyncRunner,
    OuterDeadline,
    Runner,
    RunPlan,
    WorkerCall,
    loop_finished,
    loop_started,
)

__tracebackhide__ = True  # every frame here is the plugin's: pytest leaves them out

RunnerFactory = Callable[[str, int, "str | None"], Runner]
"""(mode, workers, schedule) -> runner; schedule None: the test's own setting."""


@dataclass(frozen=True)
class HarnessConfig:
    """What the fixture knows about its test: plain values, safe to send to a process."""

    mode: str
    workers: int
    runs: int
    seed: int
    timeout: float
    budget: float | None
    reproduce: str
    reproduce_seed: int
    shard: tuple[int, int] | None = None  # (index, count) under --concurrency-shards
    replay_runs: int | None = None  # --concurrency-replay-runs: this count, whatever runs() says
    outer: OuterDeadline | None = None  # pytest-timeout's deadline for the test, if any
    reproduce_options: tuple[str, ...] = ()  # the options of ``reproduce``, after the seed


class Concurrency:
    """The object behind the ``concurrency`` fixture."""

    def __init__(self, config: HarnessConfig, runner_factory: RunnerFactory | None = None):
        self._config = config
        self._runner_factory = runner_factory
        self._runner: Runner | None = None
        self._runner_key: tuple[int, str, str | None] = (0, config.mode, None)
        self._schedule: str | None = None  # runs(schedule=...); None: the test's setting
        self.active: HarnessLoop | None = None
        self._looping = False  # a runs() loop is iterating: its runner keeps its machinery

    def __reduce__(self) -> tuple[Any, ...]:
        # A worker process gets the plain settings; the runner stays with the controller.
        return (Concurrency, (self._config,))

    def __repr__(self) -> str:
        context = current()
        where = f"worker {context.worker}, run {context.run}" if context else "between runs"
        return (
            f"<concurrency {self._config.mode} x{self._config.workers}, {where}, "
            f"seed {self._config.seed}>"
        )

    # -- identity inside a run ------------------------------------------------------------

    def _context(self, name: str) -> WorkerContext:
        context = current()
        if context is None:
            raise ConcurrencyUsageError(messages.WORKER_OUTSIDE_RUN.format(name=name))
        return context

    @property
    def worker(self) -> int:
        """This worker's index, 0..workers-1."""
        return self._context("worker").worker

    @property
    def run(self) -> int:
        """This run's index, 0..runs-1 (the run numbers printed in reports)."""
        return self._context("run").run

    @property
    def run_seed(self) -> int:
        """The seed of this run, derived from the test's seed and the run index."""
        return self._context("run_seed").seed

    @property
    def workers(self) -> int:
        context = current()
        return context.workers if context is not None else self._config.workers

    @property
    def mode(self) -> str:
        context = current()
        return context.mode if context is not None else self._config.mode

    @property
    def seed(self) -> int:
        """The test's seed: every run seed derives from it."""
        return self._config.seed

    @property
    def in_run(self) -> bool:
        return current() is not None

    def barrier(self, timeout: float | None = None) -> Any:
        """Wait until every worker of this run has arrived here.

        In asyncio mode it returns an awaitable: ``await concurrency.barrier()``.
        """
        context = current()
        if context is None:
            raise ConcurrencyUsageError(messages.BARRIER_OUTSIDE_RUN)
        return context.wait_at_barrier(self._config.timeout if timeout is None else timeout)

    # -- the explicit harness ---------------------------------------------------------------

    def runs(
        self,
        count: int | None = None,
        *,
        budget: float | None = None,
        mode: str | None = None,
        schedule: str | None = None,
    ) -> Iterator[HarnessRun]:
        """Yield runs; a budget (argument or ``--concurrency-budget``) replaces the count.

        ``mode`` ("threads", "processes" or "asyncio") overrides the test's mode for this loop;
        ``schedule`` ("random", "pct", "on" or "off") its controlled scheduler (threads only).
        """
        if current() is not None:
            raise ConcurrencyUsageError(messages.NESTED_RUN)
        if mode is not None and mode not in MODES:
            raise ConcurrencyUsageError(
                messages.RUNS_BAD_MODE.format(mode=mode, modes=", ".join(MODES))
            )
        self._schedule = _schedule_choice(schedule)
        plan = self._plan(count, budget)
        loop = HarnessLoop(self, plan, mode or self._config.mode)
        if plan.count is None:
            loop.outcome.budget = budget if budget is not None else self._config.budget
        self.active = loop
        return loop.iterate()

    def _plan(self, count: int | None, budget: float | None) -> RunPlan:
        outer = self._config.outer
        if self._config.replay_runs is not None:  # a reproduction line replays a budget hunt
            return RunPlan(count=self._config.replay_runs, outer=outer)
        budget = budget if budget is not None else self._config.budget
        if budget is not None:
            return RunPlan(count=None, deadline=time.monotonic() + budget, outer=outer)
        if count is None:
            return RunPlan(count=self._config.runs, outer=outer)  # already this shard's share
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConcurrencyUsageError(
                f"pytest-concurrency: runs() takes a whole number >= 1, e.g. runs(100); got "
                f"{count!r}"
            )
        if self._config.shard is not None:  # this item makes its share of the runs
            count = max(1, -(-count // self._config.shard[1]))
        return RunPlan(count=count, outer=outer)

    def runner(self, workers: int, mode: str | None = None) -> Runner:
        mode = mode or self._config.mode
        key = (workers, mode, self._schedule)
        if self._runner is not None and self._runner_key != key:
            self.close()
        if self._runner is None:
            if self._runner_factory is None:
                raise ConcurrencyUsageError(messages.NESTED_RUN)
            self._runner = self._runner_factory(mode, workers, self._schedule)
            self._runner_key = key
            if self._looping:
                loop_started(self._runner)
        return self._runner

    def loop_started(self) -> None:
        """A runs() loop begins: the runner it makes keeps its perturbation machinery (the
        ``sys.monitoring`` tool and its events) from one run to the next."""
        self._looping = True
        if self._runner is not None:
            loop_started(self._runner)

    def loop_finished(self) -> None:
        """The loop is over, however it ended: the machinery is released, once."""
        if not self._looping:
            return
        self._looping = False
        if self._runner is not None:
            loop_finished(self._runner)

    def close(self) -> None:
        self._looping = False
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()

    @property
    def config(self) -> HarnessConfig:
        return self._config

    @contextlib.contextmanager
    def configured(self, config: HarnessConfig) -> Iterator[None]:
        """The fixture answers for ``config`` meanwhile (``.seed``: a remembered seed tried
        first by the failing-seed memory)."""
        previous, self._config = self._config, config
        try:
            yield
        finally:
            self._config = previous


class HarnessLoop:
    """One ``for run in concurrency.runs(N)`` loop and its outcome."""

    def __init__(self, fixture: Concurrency, plan: RunPlan, mode: str | None = None) -> None:
        self.fixture = fixture
        self.plan = plan
        config = fixture.config
        self.mode = mode or config.mode
        self.outcome = SeriesOutcome(
            mode=self.mode,
            workers=config.workers,
            runs_planned=plan.count,
            seed=config.seed,
            budget=None if plan.count is not None else config.budget,
        )
        self.current: HarnessRun | None = None

    def iterate(self) -> Iterator[HarnessRun]:
        __tracebackhide__ = True
        self.fixture.loop_started()
        try:
            index = self.plan.first_index
            while self.plan.has_run(index):
                run = HarnessRun(self, index)
                self.current = run
                yield run
                run.closed = True
                run.check_awaited()
                if run.record_count == 0:
                    self.outcome.runs_done += 1
                index += 1
            self.current = None
        finally:  # also when the body raised, broke out or was interrupted
            self.fixture.loop_finished()


class HarnessRun:
    """One run of the harness: call it to start workers together; observe outcomes."""

    def __init__(self, loop: HarnessLoop, index: int) -> None:
        self.loop = loop
        self.index = index
        self.closed = False
        self.record_count = 0
        self.started: list[Coroutine[Any, Any, list[Any]]] = []
        self.notes: list[str] = []  # the report lines of its runs (asyncio's injections)
        self.explain: Callable[[], list[str]] | None = None  # asyncio: the run's steps
        self.loop_run: LoopRun | None = None  # asyncio: the run's clock, changes, injections

    def observe(self, value: object) -> None:
        """Record an outcome of this run; the histogram is printed on failure and kept in JSON."""
        self.loop.outcome.observations.add(value)

    def __call__(self, *functions: Callable[[], Any], workers: int | None = None) -> Any:
        """Start the workers together; their results, in worker order.

        In asyncio mode, called from a coroutine, it returns an awaitable of the results:
        ``got = await run(make_coro, workers=8)``.
        """
        calls = self._calls(functions, workers)
        if mode_of(self.loop.mode).runs_coroutines and _loop_running():
            coroutine = self._run_async(calls)
            self.started.append(coroutine)
            return coroutine
        runner = self.loop.fixture.runner(len(calls), self.loop.mode)
        return self._finish(run_series(runner, calls, **self._series_options(calls)))

    async def _run_async(self, calls: list[WorkerCall]) -> list[Any]:
        runner = cast(AsyncRunner, self.loop.fixture.runner(len(calls), self.loop.mode))
        return self._finish(await run_series_async(runner, calls, **self._series_options(calls)))

    def check_awaited(self) -> None:
        """An async test that called run(...) without ``await`` ran nothing: say so."""
        forgotten = [
            c for c in self.started if inspect.getcoroutinestate(c) == inspect.CORO_CREATED
        ]
        for coroutine in forgotten:
            coroutine.close()
        if forgotten:
            raise ConcurrencyUsageError(messages.RUN_NOT_AWAITED)

    def _series_options(self, calls: list[WorkerCall]) -> dict[str, Any]:
        config = self.loop.fixture.config
        self.loop.outcome.workers = len(calls)
        return {
            "outcome": self.loop.outcome,
            "plan": RunPlan(count=1, first_index=self.index, outer=self.loop.plan.outer),
            "timeout": config.timeout,
            "keep_results": True,
        }

    def _finish(self, record: RunRecord | None) -> list[Any]:
        """Count the run; raise what it raised (failures, interrupts, skips); else results."""
        fixture = self.loop.fixture
        outcome = self.loop.outcome
        self.record_count += 1
        if record is not None:
            self.notes.extend(record.notes)
            self.explain = record.explain
            self.loop_run = record.loop
        if self.record_count > 1:
            outcome.runs_done -= 1  # several run(...) calls in one iteration are one run
        if outcome.interrupt is not None and not outcome.failed:
            raise outcome.interrupt
        if outcome.failed:
            raise failure_exception(
                outcome,
                timeout=fixture.config.timeout,
                reproduce=fixture.config.reproduce,
                seed=fixture.config.reproduce_seed,
            )
        signal = outcome_signal(outcome)
        if signal is not None:
            raise signal
        return list(record.results) if record is not None else []

    def _calls(
        self, functions: tuple[Callable[[], Any], ...], workers: int | None
    ) -> list[WorkerCall]:
        if current() is not None:
            raise ConcurrencyUsageError(messages.NESTED_RUN)
        if self.closed:
            raise ConcurrencyUsageError(messages.RUN_AFTER_LOOP)
        if not functions or not all(callable(fn) for fn in functions):
            raise ConcurrencyUsageError(messages.RUN_NEEDS_CALLABLES)
        if len(functions) > 1:
            if workers is not None:
                raise ConcurrencyUsageError(messages.RUN_WORKERS_WITH_ACTORS)
            return list(functions)
        count = self.loop.fixture.config.workers if workers is None else workers
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConcurrencyUsageError(
                f"pytest-concurrency: run(fn, workers=N) takes a whole number >= 1; got {count!r}"
            )
        return [functions[0]] * count


def _schedule_choice(schedule: str | None) -> str | None:
    """``runs(schedule=...)`` checked like the marker's ``schedule=``; None keeps the test's."""
    if schedule is None:
        return None
    from pytest_concurrency.engine.settings import Source, parse_schedule

    try:
        return parse_schedule(schedule, Source("marker", "schedule=", "concurrency.runs()"))
    except ValueError as error:
        raise ConcurrencyUsageError(str(error)) from None


def _loop_running() -> bool:
    """Whether this thread runs an event loop (asyncio not imported: certainly not)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
