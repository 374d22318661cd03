"""The tracked primitives: ``Lock``, ``RLock``, ``Condition`` and ``time.sleep`` as the window of
:mod:`pytest_concurrency.races.primitives` puts them in place.

A tracked primitive behaves exactly like the real one, and additionally tells the
:data:`~pytest_concurrency.races.tracker.TRACKER` who holds it, where it was taken and in what
order; a plain wait is watched for wait-for cycles; in a controlled worker every operation is a
scheduling point and a wait blocks in the scheduler.

Pure module: no pytest import.
"""

from __future__ import annotations

import _thread
import contextlib
import itertools
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pytest_concurrency.errors import DeadlockError
from pytest_concurrency.races import happens_before
from pytest_concurrency.races.lockgraph import UNKNOWN_SITE, Site
from pytest_concurrency.races.originals import ORIGINAL_CONDITION, ORIGINAL_RLOCK, ORIGINAL_SLEEP
from pytest_concurrency.races.perturb import TRACE_LAYER
from pytest_concurrency.races.tracker import (
    CONTROL,
    PLAIN_WAIT_SLICE,
    TRACKER,
    Blocked,
    Controller,
    caller_site,
    controller,
    creator_kind,
    holder_of,
    made_by_tooling,
    primitive_name,
)

T = TypeVar("T")
_allocate_lock = _thread.allocate_lock
_get_ident = _thread.get_ident
_monotonic = time.monotonic


class TrackedLock:
    """``threading.Lock`` that knows its holder; cooperative in a controlled worker."""

    kind = "Lock"
    reentrant = False
    _serials = itertools.count(1)

    def __new__(cls) -> Any:
        if made_by_tooling():
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
        creator = creator_kind("")
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
            name = primitive_name(self._kind, self._number, self._site)
            if self._origin:
                name = f"{primitive_name(self._kind, self._number, UNKNOWN_SITE)} ({self._origin})"
            self._name = name
        return name

    @property
    def lock_class(self) -> str:
        """Kind and creation site: the locks one line of code makes, run after run."""
        return primitive_name(self._kind, 0, self._site)

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
    elif control is not None:
        got = _untraced(_take, lock, blocking, timeout, control, window)
    else:
        got = _take(lock, blocking, timeout, None, window)
    observer = happens_before.OBSERVER
    if got and observer is not None:
        observer.acquired(lock)
    return got


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
    observer = happens_before.OBSERVER
    if observer is not None:  # before the real release: the next holder sees this clock
        observer.released(lock)
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
            holder=lambda: holder_of(lock),
            taken_at=lambda: lock._taken_at,
            timeout=None if timeout == -1 else timeout,
        )
        if not control.block(blocked):
            return False
    return True


class TrackedCondition(ORIGINAL_CONDITION):  # type: ignore[misc]
    """``threading.Condition`` (and so Event, Semaphore, Barrier, Queue): cooperative waits."""

    def __new__(cls, lock: Any = None) -> Any:
        if made_by_tooling():
            return ORIGINAL_CONDITION(lock)
        return super().__new__(cls)

    def __init__(self, lock: Any = None) -> None:
        if lock is None:
            lock = TrackedRLock()
        super().__init__(lock)
        self._kind = creator_kind("Condition")
        self._number = TRACKER.number()
        self._site = caller_site()
        self._name = ""

    @property
    def name(self) -> str:
        name = self._name
        if not name:
            name = self._name = primitive_name(self._kind, self._number, self._site)
        return name

    def wait(self, timeout: float | None = None) -> bool:
        __tracebackhide__ = True
        control = controller()
        if control is None:
            result: bool = super().wait(timeout)
            return result
        return _untraced(_controlled_wait, self, control, timeout)

    def notify(self, n: int = 1) -> None:
        __tracebackhide__ = True
        control = controller()
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
    control = controller()
    if control is None:
        ORIGINAL_SLEEP(seconds)
        return
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    _untraced(control.sleep, seconds, caller_site())
