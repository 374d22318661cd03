"""Tracked locks and conditions: who holds what, where it was taken, and in what order.

While a *window* is open (:func:`tracked_primitives`, one per concurrent thread test, from its
setup to its teardown) ``threading.Lock``, ``threading.RLock``, ``threading.Condition`` and
``time.sleep`` are replaced, in the ``threading`` and ``time`` modules and wherever the user's
own modules bound them by name (``from threading import Lock``); everything is put back when
the window closes, even on failure, and so are the bindings modules first imported inside the
window made of the replacements. ``Event``, ``Semaphore``, ``BoundedSemaphore``, ``Barrier``
and ``queue.Queue`` build themselves from ``Lock`` and ``Condition``, so the ones made inside
the window are tracked too. Objects made before the window (at import time) stay untracked.

A tracked primitive behaves exactly like the real one, and additionally:

* it knows its holder and where it was taken, and records the lock-order graph of the test
  (:class:`~pytest_concurrency.races.lockgraph.LockOrderGraph`);
* a thread that waits for a lock looks, every :data:`PLAIN_WAIT_SLICE` seconds, for a wait-for
  cycle through itself; once confirmed, one thread of the cycle raises :class:`DeadlockError`,
  which names every thread, lock and site of the cycle, and so breaks it (the watchdog of
  plain thread runs, well before the run's timeout);
* in a thread run by the controlled scheduler (:data:`CONTROL` set for that thread) every
  operation is a scheduling point and a wait *blocks in the scheduler* rather than in the
  operating system, so that the scheduler can run another worker meanwhile and can tell when
  every worker is blocked.

Pure module: no pytest import.
"""

from __future__ import annotations

import _thread
import contextlib
import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType, ModuleType
from typing import Any, Protocol, TypeVar

from pytest_concurrency import messages
from pytest_concurrency.engine import owncode
from pytest_concurrency.engine.context import current
from pytest_concurrency.errors import DeadlockError
from pytest_concurrency.races.lockgraph import (
    UNKNOWN_SITE,
    LockOrderGraph,
    OrderEdge,
    Site,
    format_site,
    wait_cycle,
)
from pytest_concurrency.races.perturb import TRACE_LAYER

T = TypeVar("T")
_allocate_lock = _thread.allocate_lock
_get_ident = _thread.get_ident
_monotonic = time.monotonic

ORIGINAL_LOCK: Any = threading.Lock
ORIGINAL_RLOCK: Any = threading.RLock
ORIGINAL_CONDITION: Any = threading.Condition
ORIGINAL_SLEEP: Callable[[float], None] = time.sleep

PLAIN_WAIT_SLICE = 0.1
"""Seconds a waiting thread blocks before it looks for a wait-for cycle through itself."""
CYCLE_CONFIRMATIONS = 2
"""Consecutive looks that must find the same cycle before it is declared a deadlock."""
CREATOR_KINDS = frozenset(
    {
        "Event",
        "Semaphore",
        "BoundedSemaphore",
        "Barrier",
        "Queue",
        "LifoQueue",
        "PriorityQueue",
        "Timer",
        "Thread",
    }
)


UNKNOWN_HOLDER = -2
"""A holder that is no thread we know of (never a worker): the scheduler waits for it."""
RAW_LOCK_TYPE = type(_allocate_lock())


# -- what a controlled worker offers the primitives -----------------------------------------


@dataclass
class Blocked:
    """What a controlled worker waits for, as the scheduler sees it."""

    what: str  # "Lock#2 (bank.py:9)"
    site: Site  # where the worker waits
    available: Callable[[], bool]  # True once the worker could go on
    holder: Callable[[], int | None] = lambda: None  # thread ident holding it (locks only)
    taken_at: Callable[[], Site] = lambda: UNKNOWN_SITE  # where the holder took it
    timeout: float | None = None


class Controller(Protocol):
    """A worker run by the controlled scheduler (see :mod:`pytest_concurrency.races.scheduler`)."""

    busy: bool
    """True while the scheduler itself runs in this thread (a finalizer it triggers then is
    not controlled: it uses the primitives as an uncontrolled thread would)."""

    def sync_point(self, label: str, site: Site) -> None:
        """A scheduling point at a synchronization call."""

    def block(self, blocked: Blocked) -> bool:
        """Wait in the scheduler until ``blocked.available()``; False if it timed out."""

    def sleep(self, seconds: float, site: Site) -> None:
        """``time.sleep`` in a controlled worker: give way; really sleep only if alone."""


class _ThreadLocal(threading.local):
    def __init__(self) -> None:
        self.worker: Controller | None = None
        self.held: list[tuple[TrackedLock, int, Site]] = []


CONTROL = _ThreadLocal()
"""Per thread: the controlled worker running in it (or None), and the tracked locks it holds."""


def _controller() -> Controller | None:
    """The controlled worker of this thread, unless the scheduler itself is running in it."""
    control = CONTROL.worker
    if control is None or control.busy:
        return None
    return control


# -- sites: where in the user's code a primitive was made, taken or waited for -------------


def _module_file(module: ModuleType) -> str:
    return os.path.realpath(str(getattr(module, "__file__", "") or ""))


_SKIPPED_FILES = frozenset({_module_file(threading), _module_file(queue)})
_skip_cache: dict[str, bool] = {}


def _skipped(filename: str) -> bool:
    """Frames of threading, queue and this plugin: a site is where the user's code called."""
    answer = _skip_cache.get(filename)
    if answer is None:
        path = os.path.realpath(filename)
        answer = _skip_cache[filename] = path in _SKIPPED_FILES or owncode.is_plugin_file(path)
    return answer


def caller_site(known: int = 0) -> Site:
    """Where the caller was called from, skipping frames of threading, queue and this plugin
    (the first ``known`` of them without looking); :data:`UNKNOWN_SITE` when no other frame
    called (the plugin's own use of a primitive)."""
    frame: FrameType | None = sys._getframe(1 + known)
    skip = _skip_cache
    while frame is not None:
        filename = frame.f_code.co_filename
        skipped = skip.get(filename)
        if skipped is None:
            skipped = _skipped(filename)
        if not skipped:
            break
        frame = frame.f_back
    if frame is None:
        return UNKNOWN_SITE
    return (frame.f_code.co_filename, frame.f_lineno)


def _creator_kind(default: str) -> str:
    """ "Event", "Queue", ...: the threading or queue class whose __init__ made this object."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and _skipped(frame.f_code.co_filename):
        owner = frame.f_locals.get("self")
        name = type(owner).__name__
        if frame.f_code.co_name == "__init__" and name in CREATOR_KINDS:
            return name
        frame = frame.f_back
    return default


def _made_by_tooling() -> bool:
    """Is the primitive being made by the plugin, pytest or the standard library for their own
    use, with no controlled scheduler that would need it cooperative? Then it stays real: the
    thread runner's own barrier costs nothing extra."""
    if TRACKER.controlled:
        return False
    site = caller_site()
    return site == UNKNOWN_SITE or TRACKER.is_tooling(site[0])


def _name(kind: str, number: int, site: Site) -> str:
    """ "Lock#3 (bank.py:12)": kind, number in the test, and where the user's code made it."""
    label = f"{kind}#{number}" if number else kind
    if site == UNKNOWN_SITE or TRACKER.is_tooling(site[0]):
        return label  # made by the plugin or pytest (the runner's barrier)
    return f"{label} ({format_site(site)})"


def thread_label() -> str:
    """ "worker 2" inside a concurrent call, else the thread's name."""
    context = current()
    if context is not None:
        return f"worker {context.worker}"
    return threading.current_thread().name


# -- the tracker: one per process, active while a window is open ------------------------------


@dataclass
class _Waiter:
    lock: TrackedLock
    site: Site
    label: str
    seen: frozenset[int] = frozenset()
    confirmations: int = 0


@dataclass
class LockTracker:
    """The lock-order graph and the plain-run waits of the test whose window is open."""

    depth: int = 0
    controlled: bool = False  # a controlled scheduler runs in this window
    graph: LockOrderGraph = field(default_factory=LockOrderGraph)
    deadlocks: list[str] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)  # thread ident -> label
    _waiting: dict[int, _Waiter] = field(default_factory=dict)
    _mutex: Any = field(default_factory=_allocate_lock)
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _tooling_cache: dict[str, bool] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.depth > 0

    def reset(self) -> None:
        with self._mutex:
            self.graph = LockOrderGraph()
            self.deadlocks = []
            self.labels = {}
            self.controlled = False
            self._numbers = itertools.count(1)

    def number(self) -> int:
        return next(self._numbers) if self.depth else 0

    def is_tooling(self, filename: str) -> bool:
        answer = self._tooling_cache.get(filename)
        if answer is None:
            answer = (
                filename.startswith("<")
                or owncode.is_tooling_file(filename)
                or owncode.is_stdlib_file(filename)
            )
            self._tooling_cache[filename] = answer
        return answer

    # -- lock order -----------------------------------------------------------------------

    def note_order(
        self, lock: TrackedLock, site: Site, held: Sequence[tuple[TrackedLock, int, Site]]
    ) -> None:
        """``lock`` is about to be taken at ``site`` by a thread holding ``held``."""
        valid = [(h, s) for h, gen, s in held if h._gen == gen and h is not lock]
        if not valid or self.is_tooling(site[0]):
            return
        edges = self.graph.edges
        new = [(h, s) for h, s in valid if (h._serial, lock._serial) not in edges]
        if not new:
            return
        label = thread_label()
        serials = frozenset(h._serial for h, _ in valid)
        with self._mutex:
            for first, first_site in new:
                self.graph.name(first._serial, first.name, first.lock_class)
                self.graph.name(lock._serial, lock.name, lock.lock_class)
                self.graph.add(
                    OrderEdge(
                        first._serial,
                        lock._serial,
                        label,
                        first_site,
                        site,
                        serials - {first._serial},
                    )
                )

    def inversions(self) -> list[list[str]]:
        with self._mutex:
            return [self.graph.describe(cycle, count) for cycle, count in self.graph.inversions()]

    # -- the watchdog of plain runs: wait-for cycles through a waiting thread --------------

    def begin_wait(self, lock: TrackedLock, site: Site) -> None:
        with self._mutex:
            self._waiting[_get_ident()] = _Waiter(lock, site, thread_label())

    def end_wait(self) -> None:
        with self._mutex:
            self._waiting.pop(_get_ident(), None)

    def waiting_on(self, ident: int) -> tuple[str, Site, int | None, Site] | None:
        """What thread ``ident`` waits for in a plain run, for the report of a hang: the lock's
        name, where it waits, the holder (:data:`UNKNOWN_HOLDER` if untracked) and where the
        holder took it; None if it waits on no tracked lock."""
        with self._mutex:
            waiter = self._waiting.get(ident)
        if waiter is None:
            return None
        lock = waiter.lock
        return lock.name, waiter.site, _holder(lock), lock._taken_at

    def deadlock_through_me(self) -> str | None:
        """The report of a confirmed wait-for cycle through this thread, electing it to break
        the cycle; None if there is none (yet)."""
        me = _get_ident()
        with self._mutex:
            waiter = self._waiting.get(me)
            if waiter is None:
                return None
            waits_for = {ident: w.lock._serial for ident, w in self._waiting.items()}
            holder = {
                w.lock._serial: w.lock._owner
                for w in self._waiting.values()
                if w.lock._owner is not None
            }
            cycle = wait_cycle(me, waits_for, holder)
            key = frozenset(ident for ident, _ in cycle) if cycle else frozenset()
            waiter.confirmations = waiter.confirmations + 1 if key and key == waiter.seen else 1
            waiter.seen = key
            if not cycle or waiter.confirmations < CYCLE_CONFIRMATIONS:
                return None
            text = self._describe_cycle([self._waiting[ident] for ident, _ in cycle])
            del self._waiting[me]  # the cycle is broken from now on: only one thread raises
            self.deadlocks.append(text)
            return text

    def _describe_cycle(self, waiters: Sequence[_Waiter]) -> str:
        lines = [
            messages.DEADLOCK_PLAIN_HEADLINE.format(seconds=PLAIN_WAIT_SLICE * CYCLE_CONFIRMATIONS)
        ]
        labels = [waiter.label for waiter in waiters]
        for index, waiter in enumerate(waiters):
            lines.append(
                messages.DEADLOCK_WAIT_LINE.format(
                    who=waiter.label,
                    what=waiter.lock.name,
                    site=format_site(waiter.site),
                    holder=labels[(index + 1) % len(waiters)],
                    taken_at=format_site(waiter.lock._taken_at),
                )
            )
        lines.append(messages.DEADLOCK_PLAIN_VICTIM.format(who=labels[0]))
        return "\n".join(lines)


TRACKER = LockTracker()


# -- the tracked primitives --------------------------------------------------------------------


class TrackedLock:
    """``threading.Lock`` that knows its holder; cooperative in a controlled worker."""

    kind = "Lock"
    reentrant = False
    _serials = itertools.count(1)

    def __new__(cls) -> Any:
        if _made_by_tooling():
            return ORIGINAL_RLOCK() if cls.reentrant else _allocate_lock()
        return super().__new__(cls)

    def __init__(self) -> None:
        self._real = _allocate_lock()
        self._owner: int | None = None
        self._count = 0
        self._gen = 0
        self._serial = next(TrackedLock._serials)
        self._number = TRACKER.number()
        self._site = caller_site()
        self._taken_at: Site = UNKNOWN_SITE
        self._origin = ""
        self._name = ""
        # made by the plugin, pytest or the standard library for itself (the runner's barrier):
        # no lock order, no watchdog, just a lock (still cooperative under control)
        self._tooling = self._site == UNKNOWN_SITE or TRACKER.is_tooling(self._site[0])
        creator = _creator_kind("")
        self._kind = f"{creator} {self.kind.lower()}" if creator else self.kind

    @classmethod
    def adopt(cls, real: Any, origin: str) -> TrackedLock:
        """A tracked view of a lock made before the window (``origin``: where it lives, as
        "module.Class._lock"): the two share the real lock, so code holding either excludes
        code holding the other."""
        lock = object.__new__(cls)
        lock.__init__()  # type: ignore[misc]
        lock._real, lock._origin, lock._site, lock._name = real, origin, UNKNOWN_SITE, ""
        lock._tooling = False
        return lock

    @property
    def name(self) -> str:
        name = self._name
        if not name:
            name = _name(self._kind, self._number, self._site)
            if self._origin:
                name = f"{_name(self._kind, self._number, UNKNOWN_SITE)} ({self._origin})"
            self._name = name
        return name

    @property
    def lock_class(self) -> str:
        """Kind and creation site: the locks one line of code makes, run after run."""
        return _name(self._kind, 0, self._site)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        __tracebackhide__ = True
        return _acquire(self, blocking, timeout)

    def __enter__(self) -> bool:
        __tracebackhide__ = True
        return _acquire(self, True, -1)

    def release(self) -> None:
        __tracebackhide__ = True
        _release(self)

    def __exit__(self, *exc_info: object) -> None:
        __tracebackhide__ = True
        _release(self)

    def locked(self) -> bool:
        return self._real.locked()

    def _is_owned(self) -> bool:
        return self._real.locked()  # a Lock has no owner: the stdlib Condition asks "locked?"

    def _at_fork_reinit(self) -> None:
        self._real = _allocate_lock()
        self._owner, self._count, self._gen = None, 0, self._gen + 1

    def __repr__(self) -> str:
        state = "locked" if self._real.locked() else "unlocked"
        return f"<{state} tracked {self.name}>"


class TrackedRLock(TrackedLock):
    """``threading.RLock``: reentrant for its owner, otherwise as :class:`TrackedLock`."""

    kind = "RLock"
    reentrant = True

    def _is_owned(self) -> bool:
        return self._owner == _get_ident()

    def _recursion_count(self) -> int:
        """As ``RLock._recursion_count`` (3.11+): multiprocessing's resource tracker calls it."""
        return self._count if self._owner == _get_ident() else 0

    def _release_save(self) -> tuple[int, int | None]:
        __tracebackhide__ = True
        if self._owner != _get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        state = (self._count, self._owner)
        self._count = 1
        _release(self)
        return state

    def _acquire_restore(self, state: tuple[int, int | None]) -> None:
        __tracebackhide__ = True
        _acquire(self, True, -1)
        self._count = state[0]


def _check_timeout(blocking: bool, timeout: float) -> None:
    if not blocking and timeout != -1:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if timeout < 0 and timeout != -1:
        raise ValueError("timeout value must be a non-negative number")


def _acquire(lock: TrackedLock, blocking: bool, timeout: float) -> bool:
    __tracebackhide__ = True
    me = _get_ident()
    if lock.reentrant and lock._owner == me:
        lock._count += 1
        return True
    if timeout != -1 or not blocking:
        _check_timeout(blocking, timeout)
    control = CONTROL.worker
    if control is not None and control.busy:
        control = None
    window = TRACKER.depth > 0 and not lock._tooling
    if not window and control is None:
        got = lock._real.acquire(blocking, timeout)
        if got:
            lock._owner, lock._count = me, 1
        return got
    if control is not None:
        return _untraced(_take, lock, blocking, timeout, control, window)
    return _take(lock, blocking, timeout, None, window)


def _take(
    lock: TrackedLock, blocking: bool, timeout: float, control: Controller | None, window: bool
) -> bool:
    """Acquire ``lock`` inside a window or under control: order, watchdog or scheduler."""
    __tracebackhide__ = True
    me = _get_ident()
    local = CONTROL
    site = caller_site(known=2)  # _take and _acquire
    if window and blocking and timeout == -1 and local.held:
        TRACKER.note_order(lock, site, local.held)
    if control is not None:
        got = _controlled_acquire(control, lock, blocking, timeout, site)
    else:
        got = _watched_acquire(lock, blocking, timeout, site)
    if got:
        lock._owner, lock._count, lock._taken_at = me, 1, site
        if window:
            local.held.append((lock, lock._gen, site))
    return got


def _release(lock: TrackedLock) -> None:
    __tracebackhide__ = True
    if lock.reentrant:
        if lock._owner != _get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        lock._count -= 1
        if lock._count:
            return
    elif not lock._real.locked():
        raise RuntimeError("release unlocked lock")
    lock._owner, lock._count = None, 0
    lock._gen += 1
    lock._real.release()
    local = CONTROL
    held = local.held
    if held:
        if held[-1][0] is lock:
            held.pop()  # released in the reverse order of taking: the usual case
        else:
            local.held = [entry for entry in held if entry[0] is not lock]
    control = local.worker
    if control is not None and not control.busy:
        _untraced(_released_point, control, lock)


def _released_point(control: Controller, lock: TrackedLock) -> None:
    __tracebackhide__ = True
    control.sync_point(f"release {lock.name}", caller_site())


_gettrace = sys.gettrace
_settrace = sys.settrace


def _untraced(function: Callable[..., T], *args: Any) -> T:
    """Call ``function`` with the perturbation's tracer (3.10/3.11) taken off this thread: the
    plugin's own calls need no opcode events. A tracer it was installed over (coverage's, a
    debugger's) stays on, so that the scheduler's code is measured like any other."""
    __tracebackhide__ = True
    tracer = _gettrace()
    layer = TRACE_LAYER
    if tracer is None or tracer is not layer.ours:
        return function(*args)
    _settrace(layer.beneath)
    try:
        return function(*args)
    finally:
        _settrace(tracer)


def _watched_acquire(lock: TrackedLock, blocking: bool, timeout: float, site: Site) -> bool:
    """A plain (uncontrolled) acquire inside a window: the real lock, watched for deadlocks."""
    __tracebackhide__ = True
    real = lock._real
    if real.acquire(False):
        return True
    if not blocking:
        return False
    first = PLAIN_WAIT_SLICE if timeout == -1 else min(PLAIN_WAIT_SLICE, timeout)
    if real.acquire(True, first):  # most waits end here, as cheap as the real lock's
        return True
    if timeout != -1 and timeout <= first:
        return False
    deadline = None if timeout == -1 else _monotonic() + timeout - first
    TRACKER.begin_wait(lock, site)
    try:
        while True:
            wait = PLAIN_WAIT_SLICE
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - _monotonic()))
            if real.acquire(True, wait):
                return True
            if deadline is not None and _monotonic() >= deadline:
                return False
            report = TRACKER.deadlock_through_me()
            if report is not None:
                raise DeadlockError(report)
    finally:
        TRACKER.end_wait()


def _controlled_acquire(
    control: Controller, lock: TrackedLock, blocking: bool, timeout: float, site: Site
) -> bool:
    __tracebackhide__ = True
    control.sync_point(f"acquire {lock.name}", site)
    real = lock._real
    while not real.acquire(False):
        if not blocking:
            return False
        blocked = Blocked(
            what=lock.name,
            site=site,
            available=lambda: not real.locked(),
            holder=lambda: _holder(lock),
            taken_at=lambda: lock._taken_at,
            timeout=None if timeout == -1 else timeout,
        )
        if not control.block(blocked):
            return False
    return True


def _holder(lock: TrackedLock) -> int | None:
    """The thread holding ``lock``; :data:`UNKNOWN_HOLDER` if it is held through the real lock
    of an adopted one (by code that kept a reference from before the window)."""
    owner = lock._owner
    if owner is None and lock._real.locked():
        return UNKNOWN_HOLDER
    return owner


class TrackedCondition(ORIGINAL_CONDITION):  # type: ignore[misc]
    """``threading.Condition`` (and so Event, Semaphore, Barrier, Queue): cooperative waits."""

    def __new__(cls, lock: Any = None) -> Any:
        if _made_by_tooling():
            return ORIGINAL_CONDITION(lock)
        return super().__new__(cls)

    def __init__(self, lock: Any = None) -> None:
        if lock is None:
            lock = TrackedRLock()
        super().__init__(lock)
        self._kind = _creator_kind("Condition")
        self._number = TRACKER.number()
        self._site = caller_site()
        self._name = ""

    @property
    def name(self) -> str:
        name = self._name
        if not name:
            name = self._name = _name(self._kind, self._number, self._site)
        return name

    def wait(self, timeout: float | None = None) -> bool:
        __tracebackhide__ = True
        control = _controller()
        if control is None:
            result: bool = super().wait(timeout)
            return result
        return _untraced(_controlled_wait, self, control, timeout)

    def notify(self, n: int = 1) -> None:
        __tracebackhide__ = True
        control = _controller()
        if control is not None:
            _untraced(_notify_point, control, self)
        super().notify(n)


def _notify_point(control: Controller, cond: TrackedCondition) -> None:
    __tracebackhide__ = True
    control.sync_point(f"notify {cond.name}", caller_site())


def _controlled_wait(cond: Any, control: Controller, timeout: float | None) -> bool:
    __tracebackhide__ = True
    if not cond._is_owned():
        raise RuntimeError("cannot wait on un-acquired lock")
    site = caller_site()
    control.sync_point(f"wait {cond.name}", site)
    waiter = _allocate_lock()
    waiter.acquire()
    cond._waiters.append(waiter)
    saved = cond._release_save()
    gotit = False
    try:
        if timeout is None or timeout > 0:
            control.block(
                Blocked(
                    what=cond.name,
                    site=site,
                    available=lambda: not waiter.locked(),
                    timeout=timeout,
                )
            )
        gotit = waiter.acquire(False)
        return gotit
    finally:
        cond._acquire_restore(saved)
        if not gotit:
            with contextlib.suppress(ValueError):
                cond._waiters.remove(waiter)


def tracked_sleep(seconds: float) -> None:
    """``time.sleep``: in a controlled worker a point where it gives way; elsewhere a sleep."""
    __tracebackhide__ = True
    control = _controller()
    if control is None:
        ORIGINAL_SLEEP(seconds)
        return
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    _untraced(control.sleep, seconds, caller_site())


# -- the window: replace, then restore ----------------------------------------------------------

REPLACEMENTS: dict[int, object] = {
    id(ORIGINAL_LOCK): TrackedLock,
    id(ORIGINAL_RLOCK): TrackedRLock,
    id(ORIGINAL_CONDITION): TrackedCondition,
    id(ORIGINAL_SLEEP): tracked_sleep,
}
_PATCHED_ATTRIBUTES: tuple[tuple[ModuleType, str, object], ...] = (
    (threading, "Lock", ORIGINAL_LOCK),
    (threading, "RLock", ORIGINAL_RLOCK),
    (threading, "Condition", ORIGINAL_CONDITION),
    (time, "sleep", ORIGINAL_SLEEP),
)
_ORIGINAL_OF: tuple[tuple[object, object], ...] = tuple(
    (REPLACEMENTS[id(original)], original) for _, _, original in _PATCHED_ATTRIBUTES
)
"""(replacement, original): what a module imported inside the window gets back at its close."""


@dataclass
class _Patch:
    """The attributes one window replaced, to put back, and the modules imported before it."""

    replaced: list[tuple[Any, str, object, object]] = field(default_factory=list)
    modules_before: frozenset[str] | None = None

    def begin(self) -> None:
        self.modules_before = frozenset(sys.modules.copy())

    def set(self, owner: Any, name: str, original: object, replacement: object) -> None:
        setattr(owner, name, replacement)
        self.replaced.append((owner, name, original, replacement))

    def restore(self) -> None:
        """Put back every replaced attribute, then the primitives that modules first imported
        inside the window bound (``from threading import Lock``). An attribute that refuses to
        be put back (a user object's ``__setattr__``) raises, once everything else is back."""
        replaced, self.replaced = self.replaced, []
        before, self.modules_before = self.modules_before, None
        refused: AttributeError | TypeError | None = None
        for owner, name, original, replacement in reversed(replaced):
            if owner.__dict__.get(name) is replacement:
                try:
                    setattr(owner, name, original)
                except (AttributeError, TypeError) as error:  # what _adopt_in set may refuse
                    refused = refused or error
        if before is not None:
            _restore_imported_since(before)
        if refused is not None:
            raise refused


def _restore_imported_since(before: frozenset[str]) -> None:
    """Modules imported inside the window that bound a replacement at module level get the
    original back; a binding under the replacement's own name (``from ... import
    TrackedLock``) was meant and stays."""
    for module_name, module in sys.modules.copy().items():
        if module_name in before:
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            for replacement, original in _ORIGINAL_OF:
                if value is replacement:
                    if name != getattr(replacement, "__name__", None):
                        namespace[name] = original
                    break


_patch = _Patch()
_window_mutex = _allocate_lock()


def _user_modules(is_user_file: Callable[[str], bool] | None) -> list[ModuleType]:
    if is_user_file is None:
        return []
    modules = []
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None)
        if isinstance(filename, str) and is_user_file(filename):
            modules.append(module)
    return modules


def _open(is_user_file: Callable[[str], bool] | None) -> None:
    _patch.begin()
    for owner, name, original in _PATCHED_ATTRIBUTES:
        _patch.set(owner, name, original, REPLACEMENTS[id(original)])
    for module in _user_modules(is_user_file):
        namespace = module.__dict__
        for name, value in list(namespace.items()):
            replacement = REPLACEMENTS.get(id(value))
            if replacement is not None and value is not replacement:
                _patch.set(module, name, value, replacement)
        _adopt_locks(module)


def _adopt_locks(module: ModuleType) -> None:
    """Track the locks a user module made at import time: its globals, its classes'
    attributes and its module-level objects' attributes (one level: a singleton's lock)."""
    prefix = module.__name__.rsplit(".", 1)[-1]
    _adopt_in(module, prefix)
    for name, value in list(module.__dict__.items()):
        if getattr(type(value), "__module__", None) == module.__name__ or (
            isinstance(value, type) and value.__module__ == module.__name__
        ):
            _adopt_in(value, f"{prefix}.{name}")


def _adopt_in(owner: Any, path: str) -> None:
    namespace = getattr(owner, "__dict__", None)
    if not isinstance(namespace, Mapping):
        return
    for name, value in list(namespace.items()):
        if type(value) is RAW_LOCK_TYPE and not value.locked():
            with contextlib.suppress(AttributeError, TypeError):
                _patch.set(owner, name, value, TrackedLock.adopt(value, f"{path}.{name}"))


def originals_in_place() -> bool:
    """True when ``threading`` and ``time`` hold their own primitives again."""
    return all(getattr(owner, name) is original for owner, name, original in _PATCHED_ATTRIBUTES)


@contextlib.contextmanager
def tracked_primitives(is_user_file: Callable[[str], bool] | None = None) -> Iterator[LockTracker]:
    """Open a window; nested windows share the outermost, which starts a fresh lock-order
    graph and restores everything when it closes, even on failure.

    ``is_user_file`` picks the modules whose own bindings of the primitives (``from threading
    import Lock``) are replaced too.
    """
    with _window_mutex:
        if TRACKER.depth == 0:
            TRACKER.reset()
            try:
                _open(is_user_file)
            except BaseException:
                _patch.restore()
                raise
        TRACKER.depth += 1
    try:
        yield TRACKER
    finally:
        with _window_mutex:
            TRACKER.depth = max(0, TRACKER.depth - 1)
            if TRACKER.depth == 0:
                _patch.restore()


def close_every_window() -> None:
    """Restore everything now, whatever windows are still open (the session is ending)."""
    with _window_mutex:
        TRACKER.depth = 0
        _patch.restore()
