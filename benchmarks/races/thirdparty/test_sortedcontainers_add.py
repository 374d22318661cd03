"""A ``sortedcontainers.SortedList`` that several threads ``add`` to without a lock.

``SortedList.add`` finds the sublist with ``bisect_right(_maxes, value)``, inserts with the C
``insort`` (atomic under the GIL), calls ``self._expand(pos)`` and ends with
``self._len += 1``: a read, an addition and a write with no call between them. Into a list that
already holds data (so that every add takes that path), four workers adding at once lose a
length increment only when a worker gives way inside the library: ``len`` then disagrees with
the items, and positional access goes wrong from then on. Plain threads never show it. The twin
adds under a lock.
"""

from __future__ import annotations

import threading

import pytest

sortedcontainers = pytest.importorskip("sortedcontainers")

RACE = "SortedList.add from threads: len no longer counts the items"
"""Why the buggy test fails. Not strict: without the library under test it does not show."""
ADDS = 50
EXISTING = range(0, 100_000, 100)
"""The data already in the list every run: 1,000 values, one sublist, no split on 200 more."""


class Shared:
    """The application's sorted index, without a lock; reloaded every run."""

    def __init__(self) -> None:
        self.values = sortedcontainers.SortedList(EXISTING)

    def add(self, value: int) -> None:
        self.values.add(value)

    def reset(self) -> None:
        self.values = sortedcontainers.SortedList(EXISTING)


class Locked(Shared):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, value: int) -> None:
        with self._lock:
            super().add(value)


def add_and_check(shared: Shared, concurrency) -> None:
    workers = concurrency.workers
    for n in range(ADDS):  # the workers' values interleave, among the existing ones
        shared.add(n * workers + concurrency.worker + 1)
    concurrency.barrier()  # every worker of this run has added its values
    values = list(shared.values)
    expected = len(EXISTING) + ADDS * workers
    assert len(values) == expected, f"{expected - len(values)} values lost"
    assert values == sorted(values), "the sorted list is out of order"
    assert len(shared.values) == expected, f"len {len(shared.values)} for {expected} values"
    concurrency.barrier()  # every worker has checked
    if concurrency.worker == 0:
        shared.reset()


@pytest.mark.xfail(reason=RACE, strict=False)
@pytest.mark.concurrent(workers=4)
def test_buggy(concurrency):
    add_and_check(SHARED, concurrency)


@pytest.mark.concurrent(workers=4)
def test_fixed(concurrency):
    add_and_check(LOCKED, concurrency)


SHARED = Shared()
LOCKED = Locked()
