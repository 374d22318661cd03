"""A ``boltons.setutils.IndexedSet`` that several threads ``add`` to without a lock.

``IndexedSet.add`` checks ``item not in self.item_index_map``, stores
``self.item_index_map[item] = len(self.item_list)`` and then appends the item. Two workers
adding at once give two items the same index (``s[s.index(x)]`` is another item) or, for the
same item, append it twice (``len`` counts a duplicate). The race is inside the library; the
twin adds under a lock.
"""

from __future__ import annotations

import threading

import pytest

setutils = pytest.importorskip("boltons.setutils")

RACE = "IndexedSet.add from threads: index map and list disagree"
"""Why the buggy test fails. Not strict: without the library under test it may not show."""
ADDS = 20


class Shared:
    """The application's ordered registry of names, without a lock; a new one every run."""

    def __init__(self) -> None:
        self.names = setutils.IndexedSet()

    def add(self, name: str) -> None:
        self.names.add(name)

    def reset(self) -> None:
        self.names = setutils.IndexedSet()


class Locked(Shared):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        with self._lock:
            super().add(name)


def add_and_check(shared: Shared, concurrency) -> None:
    mine = [f"name-{concurrency.worker}-{n}" for n in range(ADDS)]
    for name in mine:
        shared.add(name)
        shared.add("common")  # every worker adds this one too
    concurrency.barrier()  # every worker of this run has added its names
    names = shared.names
    wrong = [name for name in mine if names[names.index(name)] != name]
    assert not wrong, f"{len(wrong)} names at another name's index"
    expected = ADDS * concurrency.workers + 1
    assert len(names) == expected, f"{len(names)} names, not {expected}"
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
