"""The lock tracker: who holds what, where it was taken, and in what order.

One :data:`TRACKER` per process, active while a window of :mod:`pytest_concurrency.races.primitives`
is open: it records the lock-order graph of the test
(:class:`~pytest_concurrency.races.lockgraph.LockOrderGraph`) and the waits of plain (uncontrolled)
threads, in which it looks for wait-for cycles. Also here: what a controlled worker offers the
tracked primitives (:class:`Controller`, :data:`CONTROL`) and the *sites*, where in the user's
code a primitive was made, taken or waited for. The primitives themselves are in
:mod:`pytest_concurrency.races.tracked`.

Pure module: no pytest import.
"""

from __future__ import annotations

import _thread
import itertools
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from pytest_concurrency import messages
from pytest_concurrency.engine import owncode
from pytest_concurrency.engine.context import current
from pytest_concurrency.races.lockgraph import (
    UNKNOWN_SITE,
    LockOrderGraph,
    OrderEdge,
    Site,
    format_site,
    wait_cycle,
)

if TYPE_CHECKING:
    from pytest_concurrency.races.tracked import TrackedLock

_allocate_lock = _thread.allocate_lock
_get_ident = _thread.get_ident

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


def controller() -> Controller | None:
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


def creator_kind(default: str) -> str:
    """ "Event", "Queue", ...: the threading or queue class whose __init__ made this object."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and _skipped(frame.f_code.co_filename):
        owner = frame.f_locals.get("self")
        name = type(owner).__name__
        if frame.f_code.co_name == "__init__" and name in CREATOR_KINDS:
            return name
        frame = frame.f_back
    return default


def made_by_tooling() -> bool:
    """Is the primitive being made by the plugin, pytest or the standard library for their own
    use, with no controlled scheduler that would need it cooperative? Then it stays real: the
    thread runner's own barrier costs nothing extra."""
    if TRACKER.controlled:
        return False
    site = caller_site()
    return site == UNKNOWN_SITE or TRACKER.is_tooling(site[0])


def primitive_name(kind: str, number: int, site: Site) -> str:
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
        """Not code under test (the one answer, cached by the test's filter): its locks and
        their order are not the user's."""
        return not owncode.is_user_file(filename)

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
        return lock.name, waiter.site, holder_of(lock), lock._taken_at

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


def holder_of(lock: TrackedLock) -> int | None:
    """The thread holding ``lock``; :data:`UNKNOWN_HOLDER` if it is held through the real lock
    of an adopted one (by code that kept a reference from before the window)."""
    owner = lock._owner
    if owner is None and lock._real.locked():
        return UNKNOWN_HOLDER
    return owner
