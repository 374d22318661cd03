"""The data-race watch: report two conflicting accesses that nothing orders, even in a run that
passed.

A :class:`DataRaceWatch` wraps the seeded perturbation of a thread-mode series (with
``perturb=False`` too: then a perturbation that never gives way carries it). At each
shared-state instruction of the code under test it asks :mod:`~pytest_concurrency.races.accesses`
which location the worker is about to read or write, and keeps per location the last read, write
and iteration of each worker with the vector clock it was made under
(:mod:`~pytest_concurrency.races.happens_before`, fed by the tracked primitives). It reports:

* **read-then-write** (lost update, check-then-act, lazy init): a worker read a location and
  then wrote it (its *window*), and another worker's write of it is ordered neither before that
  read nor after that write; or another worker's read is ordered neither before nor after that
  write, when no one lock was held across the window. Reads alone are never reported, and
  double-checked locking (an unlocked check, then a check and the write under the lock) is
  clean: its window is guarded;
* **iterate-while-mutate**: a worker iterated a container that another worker changed
  (an item stored or deleted, a mutating method called), with nothing ordering the two.
* **torn-read**: a worker read two containers that another worker changed in two steps, in
  the order they were read, with nothing ordering them
  (:mod:`~pytest_concurrency.races.torn_reads`).

Two writes alone are not reported: ``list.append``, ``dict.__setitem__`` and a plain attribute
store are atomic in CPython on both builds. Nor are two accesses made holding one lock (a real
lock out of the window's reach, made at import inside an object, counts as held when the worker
read it and it is held: the lockset rule, for the locks that report no happens-before), nor the
stores of ``__init__`` to ``self`` (the object is not shared yet). Each run starts with fresh
clocks and an empty table; every object whose location is kept stays alive until the run ends
(its id cannot be reused meanwhile). The watch sees what the perturbation sees: shared-state
instructions of the code under test, up to the perturbation's budget of decision points per
call (``MAX_POINTS_PER_CALL``).

The report goes to the run's record at the end of the run (``describe_run``): its
``data_races``, and under ``data_races="fail"`` a stand-in failure that fails the run.
Pure module: no pytest import.
"""

from __future__ import annotations

import _thread
import itertools
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any

from pytest_concurrency import messages
from pytest_concurrency.engine.dataraces import (
    DATA_RACE_ORIGIN,
    KIND_ITERATION,
    KIND_STALE_READ,
    KIND_TORN_READ,
    DataRace,
    RaceAccess,
    allowed,
    ordered,
    race_lines,
)
from pytest_concurrency.engine.outcomes import CallFailure, FailureOrigin, RunRecord
from pytest_concurrency.races import happens_before, torn_reads
from pytest_concurrency.races.accesses import (
    CONTAINER_TYPES,
    ITERATE,
    MISSING,
    READ,
    WRITE,
    Operation,
    Results,
    attribute_label,
    decode,
    evaluate,
    static_attribute,
)
from pytest_concurrency.races.happens_before import Clock, RunClocks, ordered_before
from pytest_concurrency.races.locations import WHOLE, locate
from pytest_concurrency.races.originals import ORIGINAL_CONDITION, RAW_LOCK_TYPE, RAW_RLOCK_TYPE
from pytest_concurrency.races.perturb import (
    NoPerturbation,
    PointHook,
    RunProfile,
    SeededPerturbation,
    seeded_perturbation,
)
from pytest_concurrency.races.tracked import TrackedCondition, TrackedLock
from pytest_concurrency.races.tracker import CONTROL

MAX_LOCATIONS_PER_RUN = 100_000
"""Locations kept per run; past them only the known ones are still watched (memory stays
bounded on a long body)."""
MAX_RACES_PER_RUN = 50
MAX_REAL_LOCKS = 64
MAX_RESULTS = 256
"""Call results a worker's call keeps (containers its calls of the user's code returned)."""
MAX_PATH = 4
"""The user's calls kept with an access (the call path a report shows)."""
"""Real locks (made out of the window's reach) a worker's call remembers having read."""
QUIET_PROFILE = RunProfile(give_way_rate=0.0, sleep_share=0.0, longest_sleep=1e-6)
"""``perturb=False`` with the watch on: decision points that never give way."""


@dataclass(slots=True)
class _Access:
    worker: int
    count: int  # the worker's own clock entry when it accessed: its epoch
    clock: Clock  # the worker's whole clock then (never changed in place)
    seq: int  # order of the accesses of the run, as recorded
    file: str
    line: int
    op: str
    locks: tuple[Held, ...]
    path: tuple[CodeType, ...]  # the user's calls that led here, innermost first

    def shown(self, op: str | None = None) -> RaceAccess:
        names = tuple(name or str(getattr(lock, "name", lock)) for lock, _, name in self.locks)
        path = tuple(getattr(code, "co_qualname", code.co_name) for code in reversed(self.path))
        return RaceAccess(self.worker, self.file, self.line, op or self.op, names, path)


@dataclass(slots=True)
class _Window:
    """A worker's read of a location and its later write of it; ``guarded`` when one
    acquisition of a lock was held from the read through the write."""

    read: _Access
    write: _Access
    guarded: bool


@dataclass(slots=True)
class _Location:
    label: str
    keep: object  # the object the location belongs to, alive for the run
    reads: dict[int, _Access] = field(default_factory=dict)
    writes: dict[int, _Access] = field(default_factory=dict)
    windows: dict[int, _Window] = field(default_factory=dict)
    iterations: dict[int, _Access] = field(default_factory=dict)
    first_writes: dict[int, _Access] = field(default_factory=dict)  # containers (torn reads)


Held = tuple[Any, int, str]
"""A lock held at an access: the lock, its acquisition (tracked locks count them; 0 for a real
lock, whose acquisitions are not seen) and its name for the report ("" for a tracked lock)."""


def _guarded(read: _Access, write: _Access) -> bool:
    return any(held[:2] == other[:2] for held in write.locks for other in read.locks)


def _share_a_lock(first: _Access, second: _Access) -> bool:
    """Both held one lock: the lockset discipline, for the real locks that report no
    happens-before (made before the window, out of its reach)."""
    return any(held[0] is other[0] for held in first.locks for other in second.locks)


def _before(access: _Access, clock: Clock) -> bool:
    return ordered_before(access.worker, access.count, clock)


class RunAccesses:
    """The accesses of one run, by location, and the races found among them.

    A read-then-write *window* of a worker conflicts with another worker's write that is
    ordered neither before the window's read nor after its write; and with another worker's
    read that is ordered neither before nor after the window's write, unless the window is
    guarded by a lock (double-checked locking reads outside the lock on purpose: a read that
    falls inside a guarded window sees the old value and takes the lock, or sees the new one).
    """

    def __init__(self, run: int, allow: Sequence[str] = ()) -> None:
        self.run = run
        self.allow = tuple(allow)
        self.clocks = RunClocks()
        self.races: dict[tuple[Any, ...], DataRace] = {}
        self._locations: dict[tuple[Any, ...], _Location] = {}
        self._seq = itertools.count()
        self._mutex: Any = _thread.allocate_lock()
        self._recent_reads: dict[int, list[_Location]] = {}  # by worker: the last containers
        self._recent_writes: dict[int, list[_Location]] = {}

    def record(
        self,
        worker: int,
        key: tuple[Any, ...],
        keep: object,
        label: Any,
        op: str,
        site: tuple[str, int, tuple[CodeType, ...]],
        locks: tuple[Any, ...],
    ) -> None:
        clock = self.clocks.clock(worker)
        with self._mutex:
            location = self._locations.get(key)
            if location is None:
                if len(self._locations) >= MAX_LOCATIONS_PER_RUN:
                    return
                location = self._locations[key] = _Location(label(), keep)
            file, line, path = site
            access = _Access(
                worker, clock[worker], clock, next(self._seq), file, line, op, locks, path
            )
            self._check_windows(location, access)
            if op == READ:
                location.reads[worker] = access
            elif op == ITERATE:
                self._check_iteration(location, access)
                location.iterations[worker] = access
            else:
                self._check_write(location, access)
                location.writes[worker] = access
            if key[1] is WHOLE and op != ITERATE:
                self._check_torn(location, access)

    def _check_torn(self, location: _Location, access: _Access) -> None:
        """A container read or written: the torn reads it completes (:mod:`torn_reads`)."""
        me = access.worker
        if access.op == READ:
            recent = self._recent_reads.setdefault(me, [])
            found = list(torn_reads.after_read(recent, location, access))
        else:
            location.first_writes.setdefault(me, access)
            recent = self._recent_writes.setdefault(me, [])
            found = list(torn_reads.after_write(recent, location, access))
        torn_reads.remember(recent, location)
        for first, read, write in found:
            self._race(first, KIND_TORN_READ, read, write, also=location.label)

    def _check_windows(self, location: _Location, access: _Access) -> None:
        """``access`` against the finished read-then-write windows of the other workers."""
        if access.op == ITERATE:
            return
        for other, window in location.windows.items():
            if other == access.worker or _before(window.write, access.clock):
                continue
            if access.op == WRITE or not window.guarded:
                self._stale(location, window.read, access, window.write)

    def _check_write(self, location: _Location, access: _Access) -> None:
        """A write that closes this worker's window (its last read of the location) against
        what the other workers did before; and against their iterations."""
        me = access.worker
        read = location.reads.get(me)
        if read is not None:
            window = location.windows[me] = _Window(read, access, _guarded(read, access))
            for other, write in location.writes.items():
                if other != me and not _before(write, read.clock):
                    self._stale(location, read, write, access)
            for other, their_read in location.reads.items():
                if other != me and not window.guarded and not _before(their_read, access.clock):
                    self._stale(location, read, their_read, access)
        for other, iteration in location.iterations.items():
            if other != me and not _before(iteration, access.clock):
                self._race(location, KIND_ITERATION, iteration, access)

    def _check_iteration(self, location: _Location, access: _Access) -> None:
        for other, write in location.writes.items():
            if other != access.worker and not _before(write, access.clock):
                self._race(location, KIND_ITERATION, access, write)

    def _stale(self, location: _Location, read: _Access, other: _Access, acted: _Access) -> None:
        self._race(location, KIND_STALE_READ, read, other, (acted.file, acted.line))

    def _race(
        self,
        location: _Location,
        kind: str,
        first: _Access,
        second: _Access,
        acted: tuple[str, int] | None = None,
        also: str | None = None,
    ) -> None:
        if (
            len(self.races) >= MAX_RACES_PER_RUN
            or _share_a_lock(first, second)
            or allowed(location.label, self.allow)
        ):
            return
        first_shown = first.shown(READ) if kind == KIND_ITERATION else first.shown()
        race = DataRace(location.label, kind, (first_shown, second.shown()), self.run, acted, also)
        self.races.setdefault(race.key, race)


class _WorkerState(threading.local):
    worker: int = -1
    accesses: RunAccesses | None = None
    real_locks: dict[int, tuple[Any, str]] | None = None  # real locks read in this call
    results: Results | None = None  # what this call's calls of the user's code returned


class _WatchedPoint:
    """A decision point that first records the access the user's frame is about to make."""

    __slots__ = ("inner", "watch", "worker")

    def __init__(self, inner: PointHook, watch: DataRaceWatch, worker: int) -> None:
        self.inner = inner
        self.watch = watch
        self.worker = worker

    def at_point(self) -> bool:
        self.watch.observe(sys._getframe(2), self.worker)  # the user's frame (PointHook)
        return self.inner.at_point()


_DECODED: dict[CodeType, dict[int, Operation]] = {}
"""Each code object's shared-state operations by offset, decoded once per session (a
library's code is met by test after test)."""


class DataRaceWatch:
    """A :class:`~pytest_concurrency.races.perturb.Perturbation` that watches the accesses of
    the one it wraps, and tells a run's data races when the run ends (``describe_run``)."""

    def __init__(
        self, inner: SeededPerturbation, *, policy: str = "fail", allow: Sequence[str] = ()
    ) -> None:
        self.inner = inner
        self.policy = policy
        self.allow = tuple(allow)
        self._state = _WorkerState()
        self._decoded = _DECODED  # shared by every watch: a code object decodes the same
        self._run: RunAccesses | None = None
        self._mutex: Any = _thread.allocate_lock()

    @property
    def mechanism(self) -> str:
        return self.inner.mechanism

    @property
    def stats(self) -> Any:
        return self.inner.stats

    # -- the Perturbation protocol --------------------------------------------------------

    def series_started(self) -> None:
        self._run = None  # each series (each run(...) of the harness) starts afresh
        self.inner.series_started()
        happens_before.observe(self)

    def series_finished(self) -> None:
        happens_before.observe(None)
        self.inner.series_finished()

    def loop_started(self) -> None:
        """A harness loop: the inner perturbation keeps its machinery between series; the
        watch still starts afresh at each series (:meth:`series_started`)."""
        self.inner.loop_started()

    def loop_finished(self) -> None:
        self.inner.loop_finished()

    def call_started(self, worker: int, run: int, run_seed: int) -> None:
        state = self._state
        state.worker = worker
        state.accesses = self._accesses_of(run)
        state.real_locks = {}
        state.results = {}
        self.inner.call_started(worker, run, run_seed)
        self.inner.watch_points(lambda inner: _WatchedPoint(inner, self, worker))

    def call_finished(self) -> None:
        self.inner.call_finished()
        state = self._state
        state.worker, state.accesses, state.real_locks, state.results = -1, None, None, None

    def describe_run(self, record: RunRecord) -> list[str]:
        """The run's data races into its record (and its failures, under "fail"); the lines
        the report shows for them."""
        describe = getattr(self.inner, "describe_run", None)
        lines: list[str] = list(describe(record)) if describe is not None else []
        run = self._run
        if run is None or run.run != record.index or not run.races:
            return lines
        races = ordered(run.races.values())
        record.data_races.extend(races)
        failing = self.policy == "fail"
        if failing:
            record.failures.append(race_failure(races, record))
        return [*lines, *race_lines(races, failing=failing)]

    def _accesses_of(self, run: int) -> RunAccesses:
        current = self._run
        if current is not None and current.run == run:
            return current
        with self._mutex:
            current = self._run
            if current is None or current.run != run:
                current = self._run = RunAccesses(run, self.allow)
            return current

    # -- happens-before from the tracked primitives (any thread) ---------------------------

    def released(self, primitive: object) -> None:
        state = self._state
        if state.accesses is not None:
            state.accesses.clocks.release(state.worker, primitive)

    def acquired(self, primitive: object) -> None:
        state = self._state
        if state.accesses is not None:
            state.accesses.clocks.acquire(state.worker, primitive)

    # -- the accesses ---------------------------------------------------------------------

    def observe(self, frame: FrameType, worker: int) -> None:
        """Record what the instruction ``frame`` is about to run touches, if it is shared."""
        state = self._state
        accesses = state.accesses
        if accesses is None:
            return
        code = frame.f_code
        operations = self._decoded.get(code)
        if operations is None:
            operations = self._decoded[code] = decode(code)
        operation = operations.get(frame.f_lasti)
        if operation is None:
            return
        results = state.results
        if operation.kind == "call":  # what this call returns is not known yet
            if results:
                results.pop((id(frame), frame.f_lasti), None)
            return
        try:
            if self._is_lock_read(operation, frame):
                return
            located = locate(operation, frame, results or {})
            if operation.returned and results is not None:
                _leave_result(operation, frame, results, self._decoded)
        except Exception:  # reading the user's objects must never break the user's call
            return
        if located is None:
            return
        site = (code.co_filename, frame.f_lineno or 0, self._user_path(frame))
        locks = self._held_locks()
        for key, keep, label, op in located:
            accesses.record(worker, key, keep, label, op, site, locks)

    def _user_path(self, frame: FrameType) -> tuple[CodeType, ...]:
        """The code of ``frame`` and of the user's frames that called it, innermost first (up
        to :data:`MAX_PATH`; the walk stops at the first frame that is not the user's)."""
        path = [frame.f_code]
        caller = frame.f_back
        is_user_code = self.inner.code_filter.is_user_code
        while caller is not None and len(path) < MAX_PATH and is_user_code(caller.f_code):
            path.append(caller.f_code)
            caller = caller.f_back
        return tuple(path)

    def _held_locks(self) -> tuple[Held, ...]:
        """The tracked locks this worker holds, and the real locks it read that are held now
        (a real lock does not say by whom: taken as held, a race may be missed, never made)."""
        held = CONTROL.held
        locks: list[Held] = [(entry[0], entry[1], "") for entry in held] if held else []
        real = self._state.real_locks
        if real:
            locks.extend((lock, 0, name) for lock, name in real.values() if _is_held(lock))
        return tuple(locks)

    def _is_lock_read(self, operation: Operation, frame: FrameType) -> bool:
        """A read of a lock (``self._lock``, ``LOCK``): never a race; a real one (out of the
        window's reach) is remembered, to be seen held later."""
        if operation.op != READ or operation.kind not in ("attr", "global"):
            return False
        if operation.kind == "global":
            value = frame.f_globals.get(operation.name, MISSING)
            name = str(operation.name)
        else:
            owner = evaluate(operation.target, frame)
            value = MISSING if owner is MISSING else static_attribute(owner, operation.name)
            name = attribute_label(owner, operation.name) if owner is not MISSING else ""
        if isinstance(value, (TrackedLock, TrackedCondition)):
            return True
        real = _real_lock_of(value)
        if real is None:
            return False
        known = self._state.real_locks
        if known is not None and len(known) < MAX_REAL_LOCKS:
            known.setdefault(id(real), (real, name))
        return True


def _real_lock_of(value: Any) -> Any:
    """The real lock or reentrant lock ``value`` is, or guards (a real condition); None."""
    kind = type(value)
    if kind is RAW_LOCK_TYPE or kind is RAW_RLOCK_TYPE:
        return value
    if isinstance(value, ORIGINAL_CONDITION) and not isinstance(value, TrackedCondition):
        return _real_lock_of(value._lock)
    return None


def _is_held(lock: Any) -> bool:
    reentrant = type(lock) is RAW_RLOCK_TYPE
    if reentrant:
        return bool(lock._is_owned())  # by this thread: exact
    return bool(lock.locked())  # by someone: maybe this worker


def _leave_result(
    operation: Operation,
    frame: FrameType,
    results: Results,
    decoded: dict[CodeType, dict[int, Operation]],
) -> None:
    """``return self._items``: the container the load is about to return becomes the result
    of the call that made ``frame``, at the caller's call site (while this worker's call
    lasts: ``results`` is cleared at the call's end and each entry at its call's next run).
    A caller paused elsewhere than in a call (a property's getter runs inside a load) or not
    the user's (not decoded) gets nothing."""
    caller = frame.f_back
    if caller is None or len(results) >= MAX_RESULTS:
        return
    site = _call_site(decoded.get(caller.f_code), caller.f_lasti)
    if site < 0:
        return
    if operation.kind == "global":
        value = frame.f_globals.get(operation.name, MISSING)
        label = str(operation.name)
    else:
        owner = evaluate(operation.target, frame, results)
        if owner is MISSING:
            return
        value = static_attribute(owner, operation.name)
        label = attribute_label(owner, operation.name)
    if isinstance(value, CONTAINER_TYPES):
        results[(id(caller), site)] = (value, label)


def _call_site(operations: dict[int, Operation] | None, lasti: int) -> int:
    """The offset of the call the caller is paused in (its ``f_lasti`` may point into the
    call's inline caches), or -1."""
    for offset, operation in (operations or {}).items():
        if operation.kind == "call" and offset <= lasti < operation.name:
            return offset
    return -1


def race_failure(races: Sequence[DataRace], record: RunRecord) -> CallFailure:
    """The stand-in failure that fails a run for its data races, placed at the first one."""
    race = ordered(races)[0]
    access = race.accesses[0]
    return CallFailure(
        worker=access.worker,
        run=record.index,
        origin=FailureOrigin(DATA_RACE_ORIGIN, access.file, access.line),
        message=messages.DATA_RACE_MESSAGE.format(location=race.location, kind=race.kind),
    )


def watch_data_races(
    perturbation: Any, *, roots: Sequence[Any], seed: int, policy: str, allow: Sequence[str]
) -> Any:
    """``perturbation`` watched for data races (under ``policy`` "fail" or "warn"); with no
    perturbation, one that never gives way carries the watch. Anything else (the controlled
    scheduler) is returned as it is."""
    if policy == "off":
        return perturbation
    if isinstance(perturbation, NoPerturbation):
        perturbation = seeded_perturbation(roots, seed)
        perturbation.fixed_profile = QUIET_PROFILE
    if not isinstance(perturbation, SeededPerturbation):
        return perturbation
    return DataRaceWatch(perturbation, policy=policy, allow=allow)
