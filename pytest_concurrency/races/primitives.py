"""The lock-tracking window: replace the primitives with tracked ones, then put them back.

While a *window* is open (:func:`tracked_primitives`, one per concurrent thread test, from its
setup to its teardown) ``threading.Lock``, ``threading.RLock``, ``threading.Condition`` and
``time.sleep`` are replaced, in the ``threading`` and ``time`` modules and wherever the user's
own modules bound them by name (``from threading import Lock``); everything is put back when
the window closes, even on failure, and so are the bindings modules first imported inside the
window made of the replacements. ``Event``, ``Semaphore``, ``BoundedSemaphore``, ``Barrier``
and ``queue.Queue`` build themselves from ``Lock`` and ``Condition``, so the ones made inside
the window are tracked too. Objects made before the window (at import time) stay untracked,
except what user modules hold at module level (and in their classes and singletons): real
locks and reentrant locks are adopted (:meth:`TrackedLock.adopt`), and so is the inner lock of
their conditions, events, barriers, semaphores and queues.

The parts:

* :mod:`pytest_concurrency.races.originals`: the real primitives, captured once;
* :mod:`pytest_concurrency.races.tracker`: the :data:`TRACKER` (lock-order graph, the watchdog
  of plain waits), what a controlled worker offers the primitives (:data:`CONTROL`), and sites;
* :mod:`pytest_concurrency.races.tracked`: the tracked primitives. A tracked primitive behaves
  exactly like the real one, and additionally knows its holder and where it was taken, and
  records the lock-order graph of the test; a thread that waits for a lock looks, every
  :data:`~pytest_concurrency.races.tracker.PLAIN_WAIT_SLICE` seconds, for a wait-for cycle
  through itself; once confirmed, one thread of the cycle raises
  :class:`~pytest_concurrency.errors.DeadlockError`, which names every thread, lock and site of
  the cycle, and so breaks it (the watchdog of plain thread runs, well before the run's
  timeout); in a thread run by the controlled scheduler every operation is a scheduling point
  and a wait *blocks in the scheduler* rather than in the operating system, so that the
  scheduler can run another worker meanwhile and can tell when every worker is blocked.

Pure module: no pytest import.
"""

from __future__ import annotations

import _thread
import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pytest_concurrency.races.originals import (
    ORIGINAL_CONDITION,
    ORIGINAL_LOCK,
    ORIGINAL_RLOCK,
    ORIGINAL_SLEEP,
    RAW_LOCK_TYPE,
    RAW_RLOCK_TYPE,
)
from pytest_concurrency.races.tracked import (
    TrackedCondition,
    TrackedLock,
    TrackedRLock,
    tracked_sleep,
)
from pytest_concurrency.races.tracker import TRACKER, LockTracker

_allocate_lock = _thread.allocate_lock


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
    try:  # never through the user's __getattr__ (an object with __slots__ has no __dict__)
        namespace = object.__getattribute__(owner, "__dict__")
    except Exception:
        return
    if not isinstance(namespace, Mapping):
        return
    for name, value in list(namespace.items()):
        view = _adopted_view(value, f"{path}.{name}")
        if view is not None:
            with contextlib.suppress(AttributeError, TypeError):
                _patch.set(owner, name, value, view)
        else:
            _adopt_parts(value, f"{path}.{name}")


def _adopted_view(value: Any, origin: str) -> TrackedLock | None:
    """A tracked view of a real lock or reentrant lock nobody holds, else None."""
    kind = type(value)
    if kind is RAW_LOCK_TYPE and not value.locked():
        return TrackedLock.adopt(value, origin)
    if kind is RAW_RLOCK_TYPE and value.acquire(False):  # free (or this thread's own)
        value.release()
        return TrackedRLock.adopt(value, origin)
    return None


def _adopt_parts(value: Any, path: str) -> None:
    """The conditions, events, barriers, semaphores and queues a user module made at import
    time: their inner lock is adopted, so that waiting, setting, putting and getting are
    tracked (lock order, and the happens-before of the data-race watch)."""
    if isinstance(value, ORIGINAL_CONDITION) and not isinstance(value, TrackedCondition):
        view = _adopted_view(value._lock, f"{path}._lock")
        if view is not None:
            _point_condition(value, view)
    elif isinstance(value, (threading.Event, threading.Barrier, threading.Semaphore)):
        inner: Any = value
        _adopt_parts(inner._cond, path)
    elif isinstance(value, queue.Queue):
        view = _adopted_view(value.mutex, f"{path}.mutex")
        if view is not None:
            _patch.set(value, "mutex", value.mutex, view)
            for condition in (value.not_empty, value.not_full, value.all_tasks_done):
                _point_condition(condition, view)


CONDITION_LOCK_PARTS = ("acquire", "release", "_release_save", "_acquire_restore", "_is_owned")
"""What ``Condition.__init__`` copies from its lock onto itself (those the lock has)."""


def _point_condition(condition: Any, view: TrackedLock) -> None:
    """Make a real condition use ``view`` as its lock (the real lock stays underneath)."""
    own = condition.__dict__
    _patch.set(condition, "_lock", condition._lock, view)
    for name in CONDITION_LOCK_PARTS:
        if name in own and hasattr(view, name):
            _patch.set(condition, name, own[name], getattr(view, name))


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
