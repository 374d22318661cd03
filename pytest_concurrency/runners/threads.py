"""Thread mode: a persistent pool of worker threads, one barrier crossing per run.

The workers live for one test item. Between runs each worker waits at its own *gate*, a raw
lock that is held while the worker must wait. The last worker to finish a run (the arrivals are
counted under one raw lock) is that run's *closer*: it decides what comes next. It opens the
next run and releases every gate, or it ends the series and wakes the caller, who opens the
next series by releasing the gates itself. So a run costs one crossing of this barrier, as in a
hand-written loop of threads meeting at a :class:`threading.Barrier`, but a cheaper crossing:
no ``Condition``, no lock allocated per wait, and no herd of woken threads queueing for one
lock (each waiter sleeps on its own gate and wakes alone). Counting a clean run into the
outcome is done by its closer *after* it released the others, while they start the next run.

The runner's own locks are raw locks captured at import (``_thread.allocate_lock``), which
neither the lock-order tracker nor the controlled scheduler ever replaces: the workers are
uncontrolled while they cross between runs, so the crossing costs the same whatever the test's
settings. Only ``concurrency.barrier()``, which user code calls inside a run, is built from
``threading`` when the runner is made, so that it is tracked, and cooperative under the
controlled scheduler.
"""

from __future__ import annotations

import _thread
import contextlib
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from pytest_concurrency.engine import cores
from pytest_concurrency.engine.context import CURRENT, WorkerContext
from pytest_concurrency.engine.outcomes import CallFailure, CallKind, RunRecord, classify
from pytest_concurrency.engine.seeds import run_seed_base, run_seed_from
from pytest_concurrency.errors import ScheduleAborted
from pytest_concurrency.races import happens_before
from pytest_concurrency.races.perturb import NO_PERTURBATION, Perturbation
from pytest_concurrency.runners.barrier import thread_barrier
from pytest_concurrency.runners.base import Series, set_collateral_apart
from pytest_concurrency.runners.hangs import describe_hung_thread

__tracebackhide__ = True  # every frame here is the plugin's: pytest leaves them out

MODE = "threads"
SWITCH_INTERVAL = 1e-6
POLL_SECONDS = 0.05
CLOSE_SECONDS = 5.0
RELEASE_GRACE = 0.3
WORKER_NAME = "concurrency-worker-{}"

_allocate_lock = _thread.allocate_lock  # the real one, whatever a window replaces later
_release = _thread.LockType.release
_monotonic = time.monotonic


def shrink_switch_interval() -> float | None:
    """Set :data:`SWITCH_INTERVAL` on GIL builds; the previous interval, or None if unchanged."""
    if not cores.gil_enabled():
        return None
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    return previous


def restore_switch_interval(previous: float | None) -> None:
    if previous is not None:
        sys.setswitchinterval(previous)


def _held_lock() -> Any:
    lock = _allocate_lock()
    lock.acquire()
    return lock


@dataclass(slots=True)
class _Run:
    """The run in progress: filled in by the workers, closed by the last one to finish."""

    record: RunRecord
    series: Series
    started: float
    done: list[bool]
    final: bool = False  # the series ends after this run, whatever its plan says


class ThreadRunner:
    """Runs series of runs in a persistent pool of ``workers`` threads."""

    mode = MODE

    def __init__(self, workers: int, perturbation: Perturbation = NO_PERTURBATION) -> None:
        self.workers = workers
        self.perturbation = perturbation
        self._describe = getattr(perturbation, "describe_run", None)
        self._gates = [_held_lock() for _ in range(workers)]
        self._arrivals = _allocate_lock()
        self._arrived = 0
        self._finished = _held_lock()  # released by the closer of a series' last run
        self._user_barrier = thread_barrier(workers)  # tracked/cooperative in a window
        self._run: _Run | None = None
        self._seed_base = 0
        self._stop = False
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._abandoned: list[threading.Thread] = []
        self._broken = False

    # -- controlling thread -------------------------------------------------------------

    def run_series(self, series: Series) -> None:
        if series.workers != self.workers:
            raise ValueError(f"this pool has {self.workers} workers, the series {series.workers}")
        if self._broken or self._stop:
            raise RuntimeError("the worker pool was abandoned after a hang; make a new runner")
        if not self._threads:
            self._start_threads()
        self._error = None
        self.perturbation.series_started()
        try:
            previous = shrink_switch_interval()
            try:
                self._seed_base = run_seed_base(series.seed)
                self._open_run(series, series.plan.first_index)
                self._release_all()
                self._wait_for_series(series)
            finally:
                restore_switch_interval(previous)
        finally:
            self.perturbation.series_finished()
        if self._error is not None:
            raise self._error

    def loop_started(self) -> None:
        """Series follow one another (a harness loop): the perturbation keeps its machinery
        between them until :meth:`loop_finished` (or :meth:`close`)."""
        self.perturbation.loop_started()

    def loop_finished(self) -> None:
        self.perturbation.loop_finished()

    def close(self) -> None:
        self.perturbation.loop_finished()
        if self._threads and not self._broken:
            self._stop = True
            self._release_all()
            deadline = _monotonic() + CLOSE_SECONDS
            for thread in self._threads:
                thread.join(max(0.0, deadline - _monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        self._abandoned.extend(self._threads)
        self._threads = []
        self._let_released_threads_exit()

    def _let_released_threads_exit(self) -> None:
        """After a hang the workers that were not stuck leave through their released gates
        (and the controlled scheduler's): give them a moment before calling any abandoned."""
        deadline = _monotonic() + RELEASE_GRACE
        for thread in self._abandoned:
            thread.join(max(0.0, deadline - _monotonic()))

    @property
    def abandoned_threads(self) -> list[threading.Thread]:
        return [thread for thread in self._abandoned if thread.is_alive()]

    def _start_threads(self) -> None:
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._worker_loop,
                args=(index,),
                name=WORKER_NAME.format(index),
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _open_gates(self) -> None:
        """Open every gate, all of them shut: one C-level loop, which the 1 µs switch interval
        cannot interrupt half-way (a Python loop would hand the GIL to each woken worker
        between two releases)."""
        deque(map(_release, self._gates), maxlen=0)

    def _release_all(self) -> None:
        """Open every gate that is shut (all of them, except when a hang broke the pool)."""
        for gate in self._gates:
            with contextlib.suppress(RuntimeError):  # already open
                gate.release()

    def _wait_for_series(self, series: Series) -> None:
        finished = self._finished
        try:
            while not finished.acquire(True, POLL_SECONDS):
                run = self._run
                overdue = run is not None and _monotonic() > series.run_deadline(run.started)
                if run is not None and overdue and self._declare_hung(run, series):
                    return
        except BaseException:
            self._abort()
            raise

    def _declare_hung(self, run: _Run, series: Series) -> bool:
        """A run outlived its deadline: record who hangs and where, abandon the pool. True
        when the wait is over (the series finished meanwhile, or it hangs)."""
        hung = [index for index, done in enumerate(run.done) if not done]
        if self._finished.acquire(False):
            return True
        if not hung:
            return False
        frames = sys._current_frames()
        record = run.record
        record.hung_workers = hung
        record.hung_after = series.run_deadline(run.started) - run.started
        workers = {t.ident: i for i, t in enumerate(self._threads) if t.ident is not None}
        for index in hung:
            ident = self._threads[index].ident
            frame = frames.get(ident) if ident is not None else None
            if ident is not None and frame is not None:  # user frames, and the lock waited on
                record.stacks[index] = describe_hung_thread(frame, ident, workers)
        self._describe_run(record)
        self._abort()
        series.on_run_done(record)
        return True

    def _describe_run(self, record: RunRecord) -> None:
        """A perturbation that can say more about a run (the controlled scheduler's
        interleaving, and its accounting of the run) adds its lines to the record's report."""
        if self._describe is not None:
            record.notes.extend(self._describe(record))

    def _abort(self) -> None:
        self._broken = True
        self._stop = True
        self._release_all()
        self._user_barrier.abort()
        self._abandoned.extend(t for t in self._threads if t.is_alive())
        self._threads = []

    # -- worker threads -----------------------------------------------------------------

    def _worker_loop(self, index: int) -> None:
        gate = self._gates[index]
        arrivals = self._arrivals
        workers = self.workers
        context = WorkerContext(
            worker=index,
            run=-1,
            workers=workers,
            mode=MODE,
            seed=0,
            wait_at_barrier=self._wait_at_user_barrier,
        )
        CURRENT.set(context)
        call = self._plain_call if self.perturbation is NO_PERTURBATION else self._call
        while True:
            gate.acquire()
            run = self._run
            if self._stop or run is None:
                return
            record = run.record
            context.run = record.index
            context.seed = record.seed
            call(index, record, run.series)
            run.done[index] = True
            with arrivals:
                self._arrived += 1
                last = self._arrived == workers
                if last:
                    self._arrived = 0
            if last:
                self._close_run(run)

    def _call(self, index: int, record: RunRecord, series: Series) -> None:
        """:meth:`_plain_call`, told to the perturbation before and after."""
        self.perturbation.call_started(index, record.index, record.seed)
        try:
            self._plain_call(index, record, series)
        except ScheduleAborted:
            pass  # the controlled schedule was torn down (Ctrl-C, a hang): leave quietly
        finally:
            self.perturbation.call_finished()

    def _plain_call(self, index: int, record: RunRecord, series: Series) -> None:
        """Call the body of one worker and keep its result or failure (with ``perturb=False``,
        the whole hot path)."""
        try:
            result = series.calls[index]()
        except BaseException as exc:  # every failure is kept, none is lost
            if isinstance(exc, ScheduleAborted):
                raise  # not the body's failure: the series it ran in is over
            if exc.__traceback__ is not None:  # start the traceback in the user's code
                exc.__traceback__ = exc.__traceback__.tb_next
            self._record_exception(record, index, exc)
        else:
            if series.keep_results:
                record.results[index] = result

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
        observer = happens_before.OBSERVER  # the data-race watch: the barrier orders its runs
        if observer is not None:
            observer.released(self._user_barrier)
        self._user_barrier.wait(timeout)
        if observer is not None:
            observer.acquired(self._user_barrier)

    # -- the closer: the last worker of a run, once every other one waits at its gate ------

    def _close_run(self, run: _Run) -> None:
        """Start the next run, or end the series and wake the caller; a clean run (no
        failure, no interrupt) is counted after the next one has started."""
        try:
            if self._stop:
                return
            record, series = run.record, run.series
            series.run_finished(run.started)
            if record.failures:
                set_collateral_apart(record)
            self._describe_run(record)
            next_index = record.index + 1
            clean = not record.failures and record.interrupt is None and not run.final
            if clean and series.plan.has_run(next_index):
                following = self._open_run(series, next_index)
                self._open_gates()
                if not series.on_run_done(record):
                    following.final = True
                return
            go_on = series.on_run_done(record) and not run.final
            if go_on and record.interrupt is None and series.plan.has_run(next_index):
                self._open_run(series, next_index)
                self._open_gates()
                return
            self._run = None
            self._finished.release()  # the caller's series is over
        except BaseException as exc:  # never leave the caller waiting
            self._error = exc
            self._stop = True
            self._run = None
            with contextlib.suppress(RuntimeError):
                self._finished.release()
            self._release_all()

    def _open_run(self, series: Series, index: int) -> _Run:
        barrier = self._user_barrier
        if barrier.broken:
            barrier.reset()
        workers = self.workers
        record = RunRecord(
            index=index,
            seed=run_seed_from(self._seed_base, index),
            workers=workers,
            results=[None] * workers if series.keep_results else [],
        )
        run = self._run = _Run(record, series, _monotonic(), [False] * workers)
        return run


def build_runner(workers: int, perturbation: Perturbation, options: dict[str, Any]) -> ThreadRunner:
    """The registry's entry for thread mode (it takes no options)."""
    return ThreadRunner(workers, perturbation)
