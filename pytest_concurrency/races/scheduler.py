"""The controlled scheduler: one worker runs at a time, and the seed says which one.

A :class:`ControlledScheduler` is a :class:`~pytest_concurrency.races.perturb.Perturbation` for the
thread runner. Each worker owns a *gate* (a raw lock); the worker holding the *token* runs, the
others wait at their gates. At every *scheduling point* the running worker asks the strategy
(:mod:`pytest_concurrency.races.strategies`) who goes on, hands the token over and waits for it to
come back. Scheduling points are

* the shared-state instructions of the code under test, found by the perturbation engine's
  tracing layer (``sys.settrace`` opcode events on 3.10/3.11, ``sys.monitoring`` on 3.12+,
  filtered by :mod:`pytest_concurrency.races.codefilter`), and
* every operation on a tracked lock, condition, event, semaphore, barrier or queue and every
  ``time.sleep`` (:mod:`pytest_concurrency.races.tracked`), where a worker that would block
  *blocks in the scheduler* instead, so that another worker can run.

Between two points a worker runs alone, so a run is one interleaving, chosen from the run's
seed: the same seed gives the same interleaving, step for step (its fingerprint is printed),
as long as the code under test is itself deterministic and no step leaves Python for longer
than :data:`STEP_DEADLINE`. A step that does (C code, I/O, a lock made at import time) is
*detached*: the token moves on without it and it rejoins at its next point, so the run
degrades to ordinary threading for that step rather than hanging; the report says so.

When no worker can go on the scheduler decides what happens next: a timed wait times out (the
earliest virtual deadline first), or, if every worker waits for a lock held by another, or
still waits after :data:`IDLE_GRACE`, it is a deadlock: the cycle is reported and every
blocked worker raises :class:`~pytest_concurrency.errors.DeadlockError`.

The state of a run is in :mod:`pytest_concurrency.races.runstate`, what the scheduler reports
of runs and tests in :mod:`pytest_concurrency.races.runreport`.

Pure module: no pytest import.
"""

from __future__ import annotations

import _thread
import contextlib
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_concurrency.engine.outcomes import RunRecord
from pytest_concurrency.engine.seeds import derive_seed
from pytest_concurrency.errors import DeadlockError, ScheduleAborted
from pytest_concurrency.races.lockgraph import Site
from pytest_concurrency.races.originals import ORIGINAL_SLEEP
from pytest_concurrency.races.primitives import tracked_primitives
from pytest_concurrency.races.runreport import deadlock_text, guarantee_of, run_notes, summary_of
from pytest_concurrency.races.runstate import (
    NO_SITE,
    SLEEPING_STATES,
    RunState,
    RunSummary,
    Status,
    os_thread_state,
)
from pytest_concurrency.races.strategies import (
    DEFAULT_DEPTH,
    STRATEGY_PCT,
    Guarantee,
    Strategy,
    make_strategy,
)
from pytest_concurrency.races.tracker import CONTROL, TRACKER, Blocked

_allocate_lock = _thread.allocate_lock
_get_ident = _thread.get_ident
_monotonic = time.monotonic

STEP_DEADLINE = 1.0
"""Seconds a worker may run without reaching a scheduling point before it is detached."""
BLOCKED_AFTER = 0.05
"""Seconds after which a worker that is asleep in the operating system (a C-level lock, I/O,
SQLite's busy wait), not using CPU, is detached, well before :data:`STEP_DEADLINE` (Linux)."""
WAIT_SLICE = 0.02
"""Seconds a waiting worker blocks at its gate before it checks deadlines and idle runs."""
IDLE_GRACE = 0.2
"""Seconds every worker must have been blocked on waits with no known holder before the
scheduler calls it a deadlock (a thread outside the run might still notify)."""
MUTEX_TIMEOUT = 1.0


class _TracerHook:
    """Set as the tracing layer's per-thread "schedule": every shared-state access is a point."""

    __slots__ = ("worker",)

    def __init__(self, worker: ControlledWorker) -> None:
        self.worker = worker

    def at_point(self) -> bool:
        __tracebackhide__ = True
        frame = sys._getframe(2)  # at_point <- the tracer's callback <- the user's frame
        self.worker.point((frame.f_code.co_filename, frame.f_lineno))
        return True


class ControlledWorker:
    """The :class:`~pytest_concurrency.races.tracker.Controller` of one worker in one run."""

    __slots__ = ("busy", "index", "run", "scheduler")

    def __init__(self, scheduler: ControlledScheduler, run: RunState, index: int) -> None:
        self.scheduler = scheduler
        self.run = run
        self.index = index
        self.busy = False  # inside the scheduler: code it runs (a finalizer) is not controlled

    def point(self, site: Site) -> None:
        __tracebackhide__ = True
        self.sync_point("", site)

    def sync_point(self, label: str, site: Site) -> None:
        __tracebackhide__ = True
        if self.busy:
            return
        self.busy = True
        try:
            self.scheduler._point(self.run, self.index, site, label)
        finally:
            self.busy = False

    def block(self, blocked: Blocked) -> bool:
        __tracebackhide__ = True
        self.busy = True
        try:
            return self.scheduler._block(self.run, self.index, blocked)
        finally:
            self.busy = False

    def sleep(self, seconds: float, site: Site) -> None:
        __tracebackhide__ = True
        if self.busy:
            ORIGINAL_SLEEP(seconds)
            return
        self.busy = True
        try:
            self.scheduler._sleep(self.run, self.index, seconds, site)
        finally:
            self.busy = False


class ControlledScheduler:
    """Runs the workers of each run one at a time, in an order drawn from the run's seed."""

    def __init__(
        self,
        roots: Sequence[Path],
        seed: int,
        workers: int,
        *,
        strategy: str = STRATEGY_PCT,
        depth: int = DEFAULT_DEPTH,
    ) -> None:
        from pytest_concurrency.races.perturb import seeded_perturbation

        self.seed = seed
        self.workers = workers
        self.strategy_name = strategy
        self.depth = depth
        self.strategy: Strategy = make_strategy(strategy, depth)
        self.tracer = seeded_perturbation(roots, seed)
        self.runs: list[RunSummary] = []
        self._mutex = _allocate_lock()
        self._run: RunState | None = None
        self._last: RunState | None = None
        self._window: contextlib.ExitStack | None = None
        TRACKER.controlled = TRACKER.active  # the runner made next needs cooperative barriers
        CREATED.append(self)

    # -- the Perturbation protocol, controlling thread --------------------------------------

    def series_started(self) -> None:
        window = contextlib.ExitStack()
        window.enter_context(tracked_primitives(self.tracer.code_filter.is_user_file))
        TRACKER.controlled = True
        self._window = window
        try:
            self.tracer.series_started()
        except BaseException:
            self._close_window()
            raise

    def series_finished(self) -> None:
        try:
            self._abort_run()
            self.tracer.series_finished()
        finally:
            self._close_window()

    def loop_started(self) -> None:
        self.tracer.loop_started()  # the tracing layer's tool is kept; the window is per series

    def loop_finished(self) -> None:
        self.tracer.loop_finished()

    def _close_window(self) -> None:
        window, self._window = self._window, None
        if window is not None:
            window.close()

    def _abort_run(self) -> None:
        with self._mutex:
            run, self._run = self._run, None
            if run is None:
                return
            run.aborted = True
            for gate in run.gates:
                with contextlib.suppress(RuntimeError):
                    gate.release()

    # -- the Perturbation protocol, worker threads ----------------------------------------

    def call_started(self, worker: int, run: int, run_seed: int) -> None:
        state = self._arrive(worker, run, run_seed)
        controlled = ControlledWorker(self, state, worker)
        CONTROL.worker = controlled
        thread_state: Any = self.tracer._thread  # the tracing layer's per-thread state
        thread_state.schedule = _TracerHook(controlled)
        self.tracer._activate()
        controlled.busy = True  # a finalizer run while it waits is not a point
        try:
            self._await_turn(state, worker)
        except ScheduleAborted:
            return  # the body's first point raises it again, inside the runner's call
        finally:
            controlled.busy = False

    def call_finished(self) -> None:
        controlled = CONTROL.worker
        CONTROL.worker = None
        self.tracer._deactivate()
        self.tracer._thread.schedule = None
        if isinstance(controlled, ControlledWorker):
            self._finish(controlled.run, controlled.index)

    # -- arrivals and departures ----------------------------------------------------------

    def _arrive(self, worker: int, index: int, run_seed: int) -> RunState:
        with self._mutex:
            run = self._run
            if run is None:
                run = self._run = RunState.new(index, run_seed, self.workers)
                run.progress_at = _monotonic()
                self.strategy.begin_run(self.workers, derive_seed("schedule", self.seed, run_seed))
            run.status[worker] = Status.READY
            run.idents[worker] = _get_ident()
            run.native_ids[worker] = threading.get_native_id()
            run.arrived += 1
            if run.arrived == run.workers:
                self._hand_over(run, None)
            return run

    def _finish(self, run: RunState, worker: int) -> None:
        with self._mutex:
            if run.status[worker] is Status.DONE:
                return
            run.record(worker, NO_SITE, "end")
            run.status[worker] = Status.DONE
            run.finished += 1
            if run.finished == run.workers:
                self._end_run(run)
            elif run.current in (worker, None) and not run.aborted:
                self._hand_over(run, worker)

    def _end_run(self, run: RunState) -> None:
        run.current = None
        run.coverage = self.strategy.end_run(run.decisions)
        if self._run is run:
            self._run = None
        self._last = run
        self.runs.append(
            RunSummary(run.workers, run.points, run.decisions, run.detaches, run.coverage, None)
        )

    # -- scheduling points ----------------------------------------------------------------

    def _point(self, run: RunState, worker: int, site: Site, label: str) -> None:
        __tracebackhide__ = True
        with self._mutex:
            if run.aborted:
                raise ScheduleAborted
            if run.status[worker] is Status.DETACHED:
                self._rejoin(run, worker, site)
            else:
                run.record(worker, site, label)
                self._hand_over(run, worker)
        self._await_turn(run, worker)

    def _rejoin(self, run: RunState, worker: int, site: Site) -> None:
        """A detached worker is back at a point: it takes the token if nobody has it."""
        run.status[worker] = Status.READY
        run.record(worker, site, "rejoins")
        if run.current is None:
            self._give(run, worker)

    def _block(self, run: RunState, worker: int, blocked: Blocked) -> bool:
        __tracebackhide__ = True
        started = _monotonic()
        with self._mutex:
            if run.aborted:
                raise ScheduleAborted
            if run.status[worker] is Status.DETACHED:
                run.status[worker] = Status.READY
            run.blocked[worker] = blocked
            if blocked.timeout is not None:
                run.virtual_deadline[worker] = run.virtual_clock + blocked.timeout
            run.record(worker, blocked.site, f"waits for {blocked.what}")
            if run.current in (worker, None):
                self._hand_over(run, worker)
        self._await_turn(run, worker)
        with self._mutex:
            run.blocked[worker] = None
            doom, run.doomed[worker] = run.doomed[worker], None
            timed_out, run.timed_out[worker] = run.timed_out[worker], False
        if doom is not None:
            raise DeadlockError(doom)
        if timed_out:
            self._sleep_until(run, started + (blocked.timeout or 0.0))
            return False
        return True

    def _sleep(self, run: RunState, worker: int, seconds: float, site: Site) -> None:
        __tracebackhide__ = True
        with self._mutex:
            if run.aborted:
                raise ScheduleAborted
            alone = False
            if run.status[worker] is Status.DETACHED:
                self._rejoin(run, worker, site)
            else:
                run.record(worker, site, "sleeps")
                self.strategy.gave_way(worker)
                alone = self._enabled(run) == [worker]
                self._hand_over(run, worker)
        self._await_turn(run, worker)
        if alone and seconds > 0:
            self._sleep_until(run, _monotonic() + seconds)

    def _sleep_until(self, run: RunState, deadline: float) -> None:
        """Let real time pass while holding the token (nothing else could run meanwhile)."""
        __tracebackhide__ = True
        run.sleep_until = deadline
        remaining = deadline - _monotonic()
        if remaining > 0:
            ORIGINAL_SLEEP(remaining)
        run.progress_at = _monotonic()

    # -- who goes on ----------------------------------------------------------------------

    def _enabled(self, run: RunState) -> list[int]:
        enabled = []
        for worker in range(run.workers):
            if run.status[worker] is not Status.READY:
                continue
            blocked = run.blocked[worker]
            if (
                blocked is None
                or run.doomed[worker] is not None
                or run.timed_out[worker]
                or blocked.available()
            ):
                enabled.append(worker)
        return enabled

    def _hand_over(self, run: RunState, running: int | None) -> None:
        """Pick who runs next (under the mutex) and open its gate; idle if nobody can."""
        enabled = self._enabled(run)
        if not enabled:
            run.current = None
            if run.idle_since is None:
                run.idle_since = _monotonic()
            self._resolve_idle(run)
            return
        run.idle_since = None
        if len(enabled) == 1:
            chosen = enabled[0]
        else:
            run.decisions += 1
            chosen = self.strategy.pick(enabled, running)
        self._give(run, chosen)

    def _give(self, run: RunState, worker: int) -> None:
        """The token goes to ``worker``: its gate opens (it may be the caller, who then passes
        its own gate at once)."""
        run.current = worker
        run.progress_at = _monotonic()
        try:  # noqa: SIM105 (a hot path: no context manager)
            run.gates[worker].release()
        except RuntimeError:  # already open: the worker has not passed it yet
            pass

    def _await_turn(self, run: RunState, worker: int) -> None:
        __tracebackhide__ = True
        gate = run.gates[worker]
        while not gate.acquire(True, WAIT_SLICE):
            if run.aborted:
                raise ScheduleAborted
            with self._mutex:
                self._poll(run)
        if run.aborted:
            raise ScheduleAborted

    def _poll(self, run: RunState) -> None:
        """A waiting worker's look around: detach an overdue step, retry an idle run."""
        if run.aborted or run.finished == run.workers:
            return
        now = _monotonic()
        current = run.current
        if current is None:
            self._hand_over(run, None)
        elif (
            run.status[current] is Status.READY
            and run.blocked[current] is None
            and now >= run.sleep_until
            and self._overdue(run, current, now)
        ):
            run.status[current] = Status.DETACHED
            run.detaches += 1
            run.record(current, NO_SITE, "detached")
            run.current = None
            self._hand_over(run, None)

    def _overdue(self, run: RunState, worker: int, now: float) -> bool:
        """Has the running worker left Python: past the step deadline, or asleep in the
        operating system (two looks, :data:`BLOCKED_AFTER` apart, without CPU time)?"""
        elapsed = now - run.progress_at
        if elapsed > STEP_DEADLINE:
            return True
        if elapsed < BLOCKED_AFTER:
            return False
        state = os_thread_state(run.native_ids[worker])
        if state is None or state[0] not in SLEEPING_STATES:
            run.asleep_since = None
            return False
        first = run.asleep_since
        if first is None or first[0] != run.progress_at or first[2] != state[1]:
            run.asleep_since = (run.progress_at, now, state[1])
            return False
        return now - first[1] >= BLOCKED_AFTER

    # -- nobody can go on -----------------------------------------------------------------

    def _resolve_idle(self, run: RunState) -> None:
        """Nobody can go on: time out a timed wait, wait for outsiders, or call a deadlock."""
        if run.finished == run.workers or run.aborted:
            return
        waiting = [w for w in range(run.workers) if run.status[w] is Status.READY]
        if any(status is Status.DETACHED for status in run.status) or not waiting:
            return
        holders = {w: self._holder(run, w) for w in waiting}
        if any(holder == OUTSIDE for holder in holders.values()):
            return  # a thread outside the run holds it: it may let go
        timed = [
            w
            for w in waiting
            if (blocked := run.blocked[w]) is not None and blocked.timeout is not None
        ]
        if timed:
            worker = min(timed, key=lambda w: (run.virtual_deadline[w], w))
            run.virtual_clock = max(run.virtual_clock, run.virtual_deadline[worker])
            run.timed_out[worker] = True
            self._give(run, worker)
            return
        all_locks = all(holder is not None for holder in holders.values())
        idle_for = _monotonic() - (run.idle_since or _monotonic())
        if not all_locks and idle_for < IDLE_GRACE:
            return
        self._declare_deadlock(run, waiting, holders)

    def _holder(self, run: RunState, worker: int) -> int | None:
        """The worker holding what ``worker`` waits for; None if nobody; OUTSIDE if a stranger."""
        blocked = run.blocked[worker]
        ident = blocked.holder() if blocked is not None else None
        if ident is None:
            return None
        if ident in run.idents:
            return run.idents.index(ident)
        return OUTSIDE

    def _declare_deadlock(
        self, run: RunState, waiting: list[int], holders: dict[int, int | None]
    ) -> None:
        text = deadlock_text(run, waiting, holders)
        run.deadlock = text
        TRACKER.deadlocks.append(text)
        run.record(waiting[0], NO_SITE, "deadlock")
        for worker in waiting:
            run.doomed[worker] = text
        self._hand_over(run, None)

    # -- what the runner asks after each run ------------------------------------------------

    def describe_run(self, record: RunRecord) -> list[str]:
        """Account ``record``'s run; for a failed run, the lines the failure report adds."""
        if not self._mutex.acquire(True, MUTEX_TIMEOUT):
            return []
        try:
            run = self._run if self._run is not None else self._last
            if run is None or run.index != record.index:
                return []
            self._account(run, clean=not record.failed and record.interrupt is None)
            if not record.failed:
                return []
            return self._notes(run, record)
        finally:
            self._mutex.release()

    def check_failed(self) -> list[str]:
        """The check after the last run failed (the harness): that run is not clean, and its
        interleaving is worth showing."""
        if not self._mutex.acquire(True, MUTEX_TIMEOUT):
            return []
        try:
            run = self._last
            if run is None or run.clean is False:
                return []  # its record failed: its lines are in the report already
            run.clean = None
            self._account(run, clean=False)
            record = RunRecord(index=run.index, seed=run.seed, workers=run.workers)
            return self._notes(run, record)
        finally:
            self._mutex.release()

    def _account(self, run: RunState, *, clean: bool) -> None:
        if run.clean is not None:
            return
        run.clean = clean
        if run.coverage is not None and self.runs:
            last = self.runs[-1]
            self.runs[-1] = RunSummary(
                last.workers, last.points, last.decisions, last.detaches, last.coverage, clean
            )

    def _notes(self, run: RunState, record: RunRecord) -> list[str]:
        name = self.strategy_name + (
            f", depth {self.depth}" if self.strategy_name == STRATEGY_PCT else ""
        )
        return run_notes(
            run, record, name, step_deadline=STEP_DEADLINE, blocked_after=BLOCKED_AFTER
        )

    # -- what the test's summary says -----------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return summary_of([self])

    def guarantee(self) -> Guarantee | None:
        return guarantee_of([self])


OUTSIDE = -1
CREATED: list[ControlledScheduler] = []
"""Schedulers made since the last :func:`take_created` (the plugin reads them per test)."""


def take_created() -> list[ControlledScheduler]:
    made = list(CREATED)
    CREATED.clear()
    return made


def make_scheduler(
    strategy: str, *, roots: Sequence[Path], seed: int, workers: int, depth: int = DEFAULT_DEPTH
) -> ControlledScheduler:
    """The controlled scheduler for a thread runner of ``workers`` workers."""
    return ControlledScheduler(roots, seed, workers, strategy=strategy, depth=depth)
