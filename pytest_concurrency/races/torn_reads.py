"""Torn reads: a worker reads two containers that another worker changes in two steps.

``complete`` pops a job from ``pending`` and stores it in ``done``; a worker counting
``len(pending) + len(done)`` in between sees the job in neither. No single location is
read-then-written, so the read-then-write rule of :mod:`~pytest_concurrency.races.datarace`
never sees it. Here: worker R read container A (``r1``) and later container B (``r2``);
worker W wrote A (``w1``, its first write of A) and later B (``w2``, its last write of B).
The bad order ``w1 < r1 < r2 < w2`` is possible unless ``r1`` happens before ``w1`` or ``w2``
happens before ``r2``; when neither, R can see A after the change and B before it. Reading in
the reverse order of the writes (publication: write the data, then the flag; read the flag,
then the data) can never tear, and is not reported.

Only whole containers are watched this way (``len(c)``, a scan, a mutation), over the last
:data:`RECENT` containers each worker read or wrote, so that a store costs a few comparisons.
Pure module: no pytest import.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pytest_concurrency.races.happens_before import ordered_before

RECENT = 4
"""Containers per worker whose reads (and writes) a new access of another is paired with."""

Torn = tuple[Any, Any, Any]
"""The first location (A), the reader's read of it and the writer's write of it."""


def _before(access: Any, clock: Any) -> bool:
    return bool(ordered_before(access.worker, access.count, clock))


def remember(recent: list[Any], location: Any) -> None:
    """``location`` as the latest of a worker's recent containers (at most :data:`RECENT`)."""
    if recent and recent[-1] is location:
        return
    if location in recent:
        recent.remove(location)
    elif len(recent) >= RECENT:
        del recent[0]
    recent.append(location)


def after_read(recent_reads: list[Any], second: Any, r2: Any) -> Iterator[Torn]:
    """The torn reads a read ``r2`` of ``second`` completes (the reader's earlier reads of
    ``recent_reads`` against each other worker's writes of both)."""
    me = r2.worker
    for first in recent_reads:
        r1 = first.reads.get(me)
        if first is second or r1 is None or r1.seq >= r2.seq:
            continue
        for other, w1 in first.first_writes.items():
            w2 = second.writes.get(other)
            if other == me or w2 is None or w2.seq <= w1.seq:
                continue
            if not _before(r1, w1.clock) and not _before(w2, r2.clock):
                yield first, r1, w1


def after_write(recent_writes: list[Any], second: Any, w2: Any) -> Iterator[Torn]:
    """The torn reads a write ``w2`` of ``second`` completes (the writer's earlier writes of
    ``recent_writes`` against each other worker's reads of both)."""
    me = w2.worker
    for first in recent_writes:
        w1 = first.first_writes.get(me)
        if first is second or w1 is None or w1.seq >= w2.seq:
            continue
        for other, r2 in second.reads.items():
            r1 = first.reads.get(other)
            if other == me or r1 is None or r1.seq >= r2.seq:
                continue
            if not _before(r1, w1.clock) and not _before(w2, r2.clock):
                yield first, r1, w1
