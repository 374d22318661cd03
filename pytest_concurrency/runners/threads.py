"""Thread mode: a persistent pool of worker threads, one barrier crossing per run.

The workers live for one test item. They meet at a :class:`threading.Barrier` before every run;
the barrier's *action* runs once all of them have arrived, that is once the previous run is
complete, and decides what comes next: close the previous run's record, start the next run, or
hand control back to the caller and wait for its next series. So a run costs exactly one
barrier crossing, the same as a hand-written loop of threads meeting at a barrier.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

from .. import cores
from ..context import CURRENT, WorkerContext
from ..outcomes import CallFailure, CallKind, RunRecord, classify
from ..perturb import NO_PERTURBATION, Perturbation
from ..seeds import run_seed
from .base import BARRIER_ABORTED, BarrierAborted, Series, drop_collateral

MODE = "threads"
SWITCH_INTERVAL = 1e-6
POLL_SECONDS = 0.05
CLOSE_SECONDS = 5.0
RELEASE_GRACE = 0.3
WORKER_NAME = "concurrency-worker-{}"


@contextlib.contextmanager
def shrunken_switch_interval(enabled: bool = True) -> Iterator[None]:
    """Switch threads as often as CPython allows, on GIL builds only; always restore."""
    if not enabled or not cores.gil_enabled():
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@dataclass
class _Run:
    """The run in progress: filled in by the workers, closed by the barrier action."""

    record: RunRecord
    started: float
    done: list[bool]


@dataclass
class _Command:
    series: Series | None  # None: close the pool


@dataclass
class _PoolState:
    series: Series | None = None
    run: _Run | None = None
    stop: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class ThreadRunner:
    """Runs series of runs in a persistent pool of ``workers`` threads."""

    mode = MODE

    def __init__(self, workers: int, perturbation: Perturbation = NO_PERTURBATION) -> None:
        self.workers = workers
        self.perturbation = perturbation
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._state = _PoolState()
        self._barrier = threading.Barrier(workers, action=self._between_runs)
        self._user_barrier = threading.Barrier(workers)
        self._threads: list[threading.Thread] = []
        self._abandoned: list[threading.Thread] = []
        self._broken = False

    # -- controlling thread -------------------------------------------------------------

    def run_series(self, series: Series) -> None:
        __tracebackhide__ = True
        if series.workers != self.workers:
            raise ValueError(f"this pool has {self.workers} workers, the series {series.workers}")
        if self._broken:
            raise RuntimeError("the worker pool was abandoned after a hang; make a new runner")
        if not self._threads:
            self._start_threads()
        state = self._state
        state.finished.clear()
        state.error = None
        self.perturbation.series_started()
        try:
            with shrunken_switch_interval():
                self._commands.put(_Command(series))
                self._wait_for_series(series)
        finally:
            self.perturbation.series_finished()
        if state.error is not None:
            raise state.error

    def close(self) -> None:
        if self._threads and not self._broken:
            self._commands.put(_Command(None))
            deadline = time.monotonic() + CLOSE_SECONDS
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        self._abandoned.extend(self._threads)
        self._threads = []
        self._let_released_threads_exit()

    def _let_released_threads_exit(self) -> None:
        """After a hang the workers that were not stuck leave through the aborted barriers (and
        the controlled scheduler's gates): give them a moment before calling any abandoned."""
        deadline = time.monotonic() + RELEASE_GRACE
        for thread in self._abandoned:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def abandoned_threads(self) -> list[threading.Thread]:
        return [thread for thread in self._abandoned if thread.is_alive()]

    def _start_threads(self) -> None:
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._worker_loop, args=(index,), name=WORKER_NAME.format(index),
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _wait_for_series(self, series: Series) -> None:
        state = self._state
        try:
            while not state.finished.wait(POLL_SECONDS):
                run = state.run
                overdue = run is not None and time.monotonic() - run.started > series.timeout
                if run is not None and overdue and self._declare_hung(run, series):
                    return
        except BaseException:
            self._abort()
            raise

    def _declare_hung(self, run: _Run, series: Series) -> bool:
        """A run outlived its deadline: record who hangs and where, abandon the pool."""
        hung = [index for index, done in enumerate(run.done) if not done]
        if not hung or self._state.finished.is_set():
            return False
        frames = sys._current_frames()
        record = run.record
        record.hung_workers = hung
        for index in hung:
            ident = self._threads[index].ident
            frame = frames.get(ident) if ident is not None else None
            if frame is not None:
                record.stacks[index] = "".join(traceback.format_stack(frame))
        self._describe_run(record)
        self._abort()
        series.on_run_done(record)
        return True

    def _describe_run(self, record: RunRecord) -> None:
        """A perturbation that can say more about a run (the controlled scheduler's
        interleaving) adds its lines to the record's report."""
        describe = getattr(self.perturbation, "describe_run", None)
        if describe is not None:
            record.notes.extend(describe(record))

    def _abort(self) -> None:
        self._broken = True
        self._state.stop = True
        self._barrier.abort()
        self._user_barrier.abort()
        self._abandoned.extend(t for t in self._threads if t.is_alive())
        self._threads = []

    # -- worker threads -----------------------------------------------------------------

    def _worker_loop(self, index: int) -> None:
        state = self._state
        context = WorkerContext(
            worker=index, run=-1, workers=self.workers, mode=MODE, seed=0,
            wait_at_barrier=self._wait_at_user_barrier,
        )
        CURRENT.set(context)
        while True:
            try:
                self._barrier.wait()
            except threading.BrokenBarrierError:
                return
            run, series = state.run, state.series
            if state.stop or run is None or series is None:
                return
            record = run.record
            context.run, context.seed = record.index, record.seed
            self._call(index, record, series)
            run.done[index] = True

    def _call(self, index: int, record: RunRecord, series: Series) -> None:
        self.perturbation.call_started(index, record.index, record.seed)
        try:
            result = series.calls[index]()
        except BaseException as exc:  # every failure is kept, none is lost
            if exc.__traceback__ is not None:  # start the traceback in the user's code
                exc.__traceback__ = exc.__traceback__.tb_next
            self._record_exception(record, index, exc)
        else:
            if series.keep_results:
                record.results[index] = result
        finally:
            self.perturbation.call_finished()

    def _record_exception(self, record: RunRecord, index: int, exc: BaseException) -> None:
        kind = classify(exc)
        if kind is CallKind.FAILED:
            record.failures.append(CallFailure.from_exception(exc, worker=index, run=record.index))
            self._user_barrier.abort()
        elif kind is CallKind.INTERRUPTED:
            record.interrupt = exc
            self._user_barrier.abort()
        else:
            record.signals.append((index, exc))

    def _wait_at_user_barrier(self, timeout: float | None) -> None:
        __tracebackhide__ = True
        try:
            self._user_barrier.wait(timeout)
        except threading.BrokenBarrierError:
            raise BarrierAborted(BARRIER_ABORTED) from None

    # -- the barrier action: runs in one worker once all are idle -----------------------

    def _between_runs(self) -> None:
        state = self._state
        try:
            if state.run is not None and state.series is not None:
                if self._close_run(state.run, state.series):
                    return
                state.run = None
                state.finished.set()  # the caller's series is over
            command = self._commands.get()
            if command.series is None:
                state.stop = True
                return
            state.series = command.series
            self._open_run(command.series, command.series.plan.first_index)
        except BaseException as exc:  # never leave the caller waiting
            state.error = exc
            state.stop = True
            state.finished.set()

    def _close_run(self, run: _Run, series: Series) -> bool:
        """Hand the finished run to the caller; open the next one and return True if wanted."""
        drop_collateral(run.record)
        self._describe_run(run.record)
        go_on = series.on_run_done(run.record)
        next_index = run.record.index + 1
        if go_on and run.record.interrupt is None and series.plan.has_run(next_index):
            self._open_run(series, next_index)
            return True
        return False

    def _open_run(self, series: Series, index: int) -> None:
        if self._user_barrier.broken:
            self._user_barrier.reset()
        record = RunRecord(
            index=index, seed=run_seed(series.seed, index), workers=self.workers,
            results=[None] * self.workers if series.keep_results else [],
        )
        self._state.run = _Run(record=record, started=time.monotonic(),
                               done=[False] * self.workers)
