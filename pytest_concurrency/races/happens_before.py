"""Happens-before between the workers of one run, from the synchronization the plugin sees.

Each worker carries a vector clock (worker -> count). A *release* (a tracked lock released, a
condition waited on, an event set, a queue's put: every one of them releases a tracked lock;
arriving at ``concurrency.barrier()``) joins the worker's clock into the clock of the primitive
and then ticks the worker's own entry; an *acquire* (the lock taken again, the wait or the
barrier passed) joins the primitive's clock into the worker's. An access made at count ``c`` of
worker ``w`` happens before everything a worker does once its clock holds ``c`` or more for
``w`` (FastTrack's epochs: one number per access, the clock only at reads kept for later).

A worker's clock is never changed in place: each change makes a new dict, so an access can
keep the clock it was made under for free. Every run starts afresh (its start and end are the
runner's barrier: nothing of one run is concurrent with the next).

The tracked primitives report through :data:`OBSERVER`, set only while a data-race watch runs a
series (one attribute read per lock operation otherwise). Pure module: no pytest import.
"""

from __future__ import annotations

import _thread
from typing import Any, Protocol

Clock = dict[int, int]


class SyncObserver(Protocol):
    """What the tracked primitives tell while a data-race watch is on."""

    def released(self, primitive: object) -> None: ...

    def acquired(self, primitive: object) -> None: ...


OBSERVER: SyncObserver | None = None
"""The data-race watch of the series running now, or None (the primitives then pay nothing)."""


def observe(observer: SyncObserver | None) -> None:
    global OBSERVER
    OBSERVER = observer


def join(mine: Clock, theirs: Clock) -> Clock:
    """The pointwise maximum, as a new clock (``mine`` itself when nothing is newer)."""
    newer = {worker: count for worker, count in theirs.items() if count > mine.get(worker, 0)}
    return {**mine, **newer} if newer else mine


def ordered_before(worker: int, count: int, clock: Clock) -> bool:
    """Does the access made by ``worker`` at ``count`` happen before a point at ``clock``?"""
    return count <= clock.get(worker, 0)


class RunClocks:
    """The vector clocks of one run: one per worker, one per primitive it synchronized on."""

    def __init__(self) -> None:
        self._workers: dict[int, Clock] = {}
        self._primitives: dict[int, tuple[object, Clock]] = {}  # the object kept: ids stay
        self._mutex: Any = _thread.allocate_lock()

    def clock(self, worker: int) -> Clock:
        clock = self._workers.get(worker)
        if clock is None:
            clock = self._workers[worker] = {worker: 1}
        return clock

    def release(self, worker: int, primitive: object) -> None:
        with self._mutex:
            clock = self.clock(worker)
            kept = self._primitives.get(id(primitive))
            merged = clock if kept is None else join(kept[1], clock)
            self._primitives[id(primitive)] = (primitive, merged)
            self._workers[worker] = {**clock, worker: clock[worker] + 1}

    def acquire(self, worker: int, primitive: object) -> None:
        with self._mutex:
            kept = self._primitives.get(id(primitive))
            if kept is not None:
                self._workers[worker] = join(self.clock(worker), kept[1])
