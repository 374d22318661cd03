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

Pure module: no pytest import.
"""

from __future__ import annotations

import _thread
import contextlib
import hashlib
import linecache
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from pytest_concurrency import messages
from pytest_concurrency.engine.outcomes import RunRecord
from pytest_concurrency.engine.seeds import derive_seed
from pytest_concurrency.errors import DeadlockError, ScheduleAborted
from pytest_concurrency.races.lockgraph import UNKNOWN_SITE, Site, format_site, wait_cycle
from pytest_concurrency.races.originals import ORIGINAL_SLEEP
from pytest_concurrency.races.primitives import tracked_primitives
from pytest_concurrency.races.strategies import (
    DEFAULT_DEPTH,
    STRATEGY_PCT,
    Guarantee,
    PCTStrategy,
    RunCoverage,
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
HISTORY_STEPS = 512
SHOWN_LINES = 20
"""Lines of interleaving in a failure report (a worker's steps on one line fold into one)."""
SOURCE_WIDTH = 64
MUTEX_TIMEOUT = 1.0


class Status(Enum):
    ARRIVING = "arriving"
    READY = "ready"  # running, or waiting for the token (blocked or not)
    DETACHED = "detached"  # ran past the step deadline; runs uncontrolled until its next point
    DONE = "done"


class Step(NamedTuple):
    """One scheduling point: which worker, where, and what (empty for a shared-state access)."""

    number: int
    worker: int
    site: Site
    label: str = ""


_STEP_KEYS: dict[tuple[Site, str], int] = {}
FINGERPRINT_MASK = (1 << 64) - 1


def step_key(site: Site, label: str) -> int:
    """A number for (file name, line, kind of step), the same in every process."""
    key = _STEP_KEYS.get((site, label))
    if key is None:
        kind = label.split(" ", 1)[0]
        text = f"{os.path.basename(site[0])}:{site[1]}:{kind}"
        key = _STEP_KEYS[(site, label)] = int.from_bytes(
            hashlib.blake2b(text.encode(), digest_size=8).digest(), "big"
        )
    return key


@dataclass
class _Run:
    """The state of one run: gates, statuses, what each blocked worker waits for, history."""

    index: int
    seed: int
    workers: int
    gates: list[Any]
    status: list[Status]
    idents: list[int]
    native_ids: list[int]
    blocked: list[Blocked | None]
    doomed: list[str | None]
    timed_out: list[bool]
    virtual_deadline: list[float]
    history: deque[Step] = field(default_factory=lambda: deque(maxlen=HISTORY_STEPS))
    fingerprint: int = 0
    current: int | None = None
    arrived: int = 0
    finished: int = 0
    points: int = 0
    decisions: int = 0
    detaches: int = 0
    progress_at: float = 0.0
    sleep_until: float = 0.0
    idle_since: float | None = None
    asleep_since: tuple[float, float, int] | None = None  # (step began, first look, CPU ticks)
    virtual_clock: float = 0.0
    deadlock: str | None = None
    aborted: bool = False
    coverage: RunCoverage | None = None
    clean: bool | None = None

    @classmethod
    def new(cls, index: int, seed: int, workers: int) -> _Run:
        gates = []
        for _ in range(workers):
            gate = _allocate_lock()
            gate.acquire()
            gates.append(gate)
        return cls(
            index=index,
            seed=seed,
            workers=workers,
            gates=gates,
            status=[Status.ARRIVING] * workers,
            idents=[0] * workers,
            native_ids=[0] * workers,
            blocked=[None] * workers,
            doomed=[None] * workers,
            timed_out=[False] * workers,
            virtual_deadline=[0.0] * workers,
        )

    def record(self, worker: int, site: Site, label: str = "") -> None:
        self.points += 1
        if site == UNKNOWN_SITE:
            return  # the plugin's own use of a primitive (the runner's barrier): not shown
        self.history.append(Step(self.points, worker, site, label))
        key = step_key(site, label) ^ (worker + 1)
        self.fingerprint = (self.fingerprint * 1_000_003 + key) & FINGERPRINT_MASK

    @property
    def interleaving(self) -> str:
        """The fingerprint of every step of the run, in order: equal for equal interleavings."""
        return f"{self.fingerprint:016x}"


@dataclass(frozen=True)
class RunSummary:
    """What one finished run tells about the schedule (kept for the guarantee and the JSON)."""

    workers: int
    points: int
    decisions: int
    detaches: int
    coverage: RunCoverage
    clean: bool | None


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

    def __init__(self, scheduler: ControlledScheduler, run: _Run, index: int) -> None:
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
        self._run: _Run | None = None
        self._last: _Run | None = None
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

    def _arrive(self, worker: int, index: int, run_seed: int) -> _Run:
        with self._mutex:
            run = self._run
            if run is None:
                run = self._run = _Run.new(index, run_seed, self.workers)
                run.progress_at = _monotonic()
                self.strategy.begin_run(self.workers, derive_seed("schedule", self.seed, run_seed))
            run.status[worker] = Status.READY
            run.idents[worker] = _get_ident()
            run.native_ids[worker] = threading.get_native_id()
            run.arrived += 1
            if run.arrived == run.workers:
                self._hand_over(run, None)
            return run

    def _finish(self, run: _Run, worker: int) -> None:
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

    def _end_run(self, run: _Run) -> None:
        run.current = None
        run.coverage = self.strategy.end_run(run.decisions)
        if self._run is run:
            self._run = None
        self._last = run
        self.runs.append(
            RunSummary(run.workers, run.points, run.decisions, run.detaches, run.coverage, None)
        )

    # -- scheduling points ----------------------------------------------------------------

    def _point(self, run: _Run, worker: int, site: Site, label: str) -> None:
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

    def _rejoin(self, run: _Run, worker: int, site: Site) -> None:
        """A detached worker is back at a point: it takes the token if nobody has it."""
        run.status[worker] = Status.READY
        run.record(worker, site, "rejoins")
        if run.current is None:
            self._give(run, worker)

    def _block(self, run: _Run, worker: int, blocked: Blocked) -> bool:
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

    def _sleep(self, run: _Run, worker: int, seconds: float, site: Site) -> None:
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

    def _sleep_until(self, run: _Run, deadline: float) -> None:
        """Let real time pass while holding the token (nothing else could run meanwhile)."""
        __tracebackhide__ = True
        run.sleep_until = deadline
        remaining = deadline - _monotonic()
        if remaining > 0:
            ORIGINAL_SLEEP(remaining)
        run.progress_at = _monotonic()

    # -- who goes on ----------------------------------------------------------------------

    def _enabled(self, run: _Run) -> list[int]:
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

    def _hand_over(self, run: _Run, running: int | None) -> None:
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

    def _give(self, run: _Run, worker: int) -> None:
        """The token goes to ``worker``: its gate opens (it may be the caller, who then passes
        its own gate at once)."""
        run.current = worker
        run.progress_at = _monotonic()
        try:  # noqa: SIM105 (a hot path: no context manager)
            run.gates[worker].release()
        except RuntimeError:  # already open: the worker has not passed it yet
            pass

    def _await_turn(self, run: _Run, worker: int) -> None:
        __tracebackhide__ = True
        gate = run.gates[worker]
        while not gate.acquire(True, WAIT_SLICE):
            if run.aborted:
                raise ScheduleAborted
            with self._mutex:
                self._poll(run)
        if run.aborted:
            raise ScheduleAborted

    def _poll(self, run: _Run) -> None:
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

    def _overdue(self, run: _Run, worker: int, now: float) -> bool:
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

    def _resolve_idle(self, run: _Run) -> None:
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

    def _holder(self, run: _Run, worker: int) -> int | None:
        """The worker holding what ``worker`` waits for; None if nobody; OUTSIDE if a stranger."""
        blocked = run.blocked[worker]
        ident = blocked.holder() if blocked is not None else None
        if ident is None:
            return None
        if ident in run.idents:
            return run.idents.index(ident)
        return OUTSIDE

    def _declare_deadlock(
        self, run: _Run, waiting: list[int], holders: dict[int, int | None]
    ) -> None:
        text = self._deadlock_text(run, waiting, holders)
        run.deadlock = text
        TRACKER.deadlocks.append(text)
        run.record(waiting[0], NO_SITE, "deadlock")
        for worker in waiting:
            run.doomed[worker] = text
        self._hand_over(run, None)

    def _deadlock_text(self, run: _Run, waiting: list[int], holders: dict[int, int | None]) -> str:
        lines = [messages.DEADLOCK_CONTROLLED_HEADLINE.format(run=run.index, step=run.points)]
        for worker in waiting:
            blocked = run.blocked[worker]
            if blocked is None:
                continue
            holder = holders.get(worker)
            if holder is None:
                lines.append(
                    messages.DEADLOCK_NO_HOLDER_LINE.format(
                        who=f"worker {worker}", what=blocked.what, site=format_site(blocked.site)
                    )
                )
            else:
                lines.append(
                    messages.DEADLOCK_WAIT_LINE.format(
                        who=f"worker {worker}",
                        what=blocked.what,
                        site=format_site(blocked.site),
                        holder=f"worker {holder}",
                        taken_at=format_site(blocked.taken_at()),
                    )
                )
        known = {w: h for w, h in holders.items() if h is not None}
        cycle = wait_cycle(waiting[0], {w: w for w in known}, known)
        for start in waiting:
            if cycle is not None:
                break
            cycle = wait_cycle(start, {w: w for w in known}, known)
        if cycle is not None:
            parts = []
            for worker, _ in cycle:
                blocked = run.blocked[worker]
                parts.append(f"worker {worker} -> {blocked.what if blocked else '?'}")
            parts.append(f"worker {cycle[0][0]}")
            lines.append(messages.DEADLOCK_CYCLE_LINE.format(cycle=" -> ".join(parts)))
        return "\n".join(lines)

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

    def _account(self, run: _Run, *, clean: bool) -> None:
        if run.clean is not None:
            return
        run.clean = clean
        if run.coverage is not None and self.runs:
            last = self.runs[-1]
            self.runs[-1] = RunSummary(
                last.workers, last.points, last.decisions, last.detaches, last.coverage, clean
            )

    def _notes(self, run: _Run, record: RunRecord) -> list[str]:
        name = self.strategy_name + (
            f", depth {self.depth}" if self.strategy_name == STRATEGY_PCT else ""
        )
        lines = [
            messages.SCHEDULE_NOTE.format(
                strategy=name,
                points=run.points,
                decisions=run.decisions,
                fingerprint=run.interleaving,
            )
        ]
        if run.detaches:
            lines.append(
                messages.SCHEDULE_DETACHED.format(
                    count=run.detaches, seconds=STEP_DEADLINE, blocked=2 * BLOCKED_AFTER
                )
            )
        else:
            lines.append(messages.SCHEDULE_EXACT)
        steps, what = self._steps_before_failure(run, record)
        folded = fold_steps(steps)[-SHOWN_LINES:]
        if folded:
            shown = sum(len(group) for group in folded)
            lines.append(
                messages.SCHEDULE_STEPS_TITLE.format(shown=shown, total=run.points, what=what)
            )
            lines.extend(_step_line(group) for group in folded)
        if record.hung_workers:
            lines.extend(self._state_lines(run))
        return lines

    def _steps_before_failure(self, run: _Run, record: RunRecord) -> tuple[list[Step], str]:
        history = list(run.history)
        if record.failures:  # up to the end of the first failing call
            failure = record.failures[0]
            ends = [
                i
                for i, step in enumerate(history)
                if step.worker == failure.worker and step.label == "end"
            ]
            stop = ends[0] if ends else len(history) - 1
            what = messages.SCHEDULE_BEFORE_FAILURE.format(
                worker=failure.worker, error=failure.origin.exc_type
            )
            return history[: stop + 1], what
        if record.hung_workers:
            return history, messages.SCHEDULE_BEFORE_HANG
        return history, messages.SCHEDULE_BEFORE_CHECK

    def _state_lines(self, run: _Run) -> list[str]:
        lines = []
        for worker in range(run.workers):
            status = run.status[worker]
            blocked = run.blocked[worker]
            if status is Status.DONE:
                continue
            if blocked is not None:
                state = f"waits for {blocked.what} at {format_site(blocked.site)}"
            elif status is Status.DETACHED:
                state = messages.SCHEDULE_STATE_DETACHED
            elif run.current == worker:
                state = messages.SCHEDULE_STATE_RUNNING.format(
                    seconds=_monotonic() - run.progress_at
                )
            else:
                state = "waits for its turn"
            lines.append(f"    worker {worker} {state}")
        return lines

    # -- what the test's summary says -----------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return summary_of([self])

    def guarantee(self) -> Guarantee | None:
        return guarantee_of([self])


def guarantee_of(schedulers: Sequence[ControlledScheduler]) -> Guarantee | None:
    """PCT's statement over the covered clean runs; None for random or when none count.

    Each counted run found a given depth-d bug with probability at least 1/(n k^(d-1)) for its
    own n and k; with the largest n and k of them, the stated bound holds for all.
    """
    pct = [s for s in schedulers if isinstance(s.strategy, PCTStrategy)]
    counted = [
        run
        for s in pct
        for run in s.runs
        if run.clean and run.coverage.covered and not run.detaches
    ]
    if not pct or not counted:
        return None
    return Guarantee(
        workers=max(run.workers for run in counted),
        steps=max(run.coverage.steps_bound for run in counted),
        depth=max(s.depth for s in pct),
        clean_runs=len(counted),
        runs=sum(len(s.runs) for s in pct),
    )


def summary_of(schedulers: Sequence[ControlledScheduler]) -> dict[str, Any]:
    """The JSON-able summary of a test's controlled runs."""
    runs = [run for s in schedulers for run in s.runs]
    first = schedulers[0]
    entry: dict[str, Any] = {
        "strategy": first.strategy_name,
        "workers": max(s.workers for s in schedulers),
        "runs": len(runs),
        "max_points": max((run.points for run in runs), default=0),
        "max_decisions": max((run.decisions for run in runs), default=0),
        "detached_runs": sum(1 for run in runs if run.detaches),
    }
    if first.strategy_name == STRATEGY_PCT:
        entry["depth"] = first.depth
        guarantee = guarantee_of(schedulers)
        entry["guarantee"] = guarantee.as_dict() if guarantee is not None else None
    return entry


SLEEPING_STATES = frozenset("SD")
"""/proc thread states of a thread waiting in the kernel (a lock, I/O, a sleep)."""


def os_thread_state(native_id: int) -> tuple[str, int] | None:
    """(state letter, CPU ticks) of a thread of this process from /proc; None elsewhere."""
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as stat:
            text = stat.read().decode()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    try:
        return fields[0], int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


OUTSIDE = -1
NO_SITE: Site = ("", 0)  # a step that is an event (end, detach, deadlock), not a line
CREATED: list[ControlledScheduler] = []
"""Schedulers made since the last :func:`take_created` (the plugin reads them per test)."""


def take_created() -> list[ControlledScheduler]:
    made = list(CREATED)
    CREATED.clear()
    return made


def fold_steps(steps: Sequence[Step]) -> list[list[Step]]:
    """Steps grouped so that a worker's consecutive steps on one line of code are one group
    (the accesses and synchronization calls of ``concurrency.barrier()`` fold into one); events
    without a line (end, detached, deadlock) stay apart."""
    groups: list[list[Step]] = []
    for step in steps:
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and step.site[0]
            and last.worker == step.worker
            and last.site == step.site
        ):
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


def format_steps(steps: Sequence[Step]) -> list[str]:
    """One line per group of :func:`fold_steps`."""
    return [_step_line(group) for group in fold_steps(steps)]


def _step_line(group: Sequence[Step]) -> str:
    """ "step N  worker W  file:line  [what it did last there: ]source (xcount)"."""
    step = group[0]
    repeat = f" (x{len(group)})" if len(group) > 1 else ""
    where = format_site(step.site) if step.site[0] else ""
    label = next((s.label for s in reversed(group) if s.label), "")
    if label and not step.site[0]:
        text = label
    else:
        source = linecache.getline(step.site[0], step.site[1]).strip() if step.site[0] else ""
        if len(source) > SOURCE_WIDTH:
            source = source[: SOURCE_WIDTH - 3] + "..."
        text = f"{label}: {source}" if label else source
    return f"    step {step.number:>5}  worker {step.worker}  {where:<24} {text}{repeat}".rstrip()


def make_scheduler(
    strategy: str, *, roots: Sequence[Path], seed: int, workers: int, depth: int = DEFAULT_DEPTH
) -> ControlledScheduler:
    """The controlled scheduler for a thread runner of ``workers`` workers."""
    return ControlledScheduler(roots, seed, workers, strategy=strategy, depth=depth)
