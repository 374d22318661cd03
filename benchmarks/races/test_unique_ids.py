"""A unique-id generator that hands out the same id twice.

``next_id`` increments ``self._last`` and formats it; two workers can read the same value (a
lost update) or both format the later one. The twin draws under a lock.
"""

from __future__ import annotations

import threading

import pytest

RACE = "an id issued twice"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""


class IdAllocator:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._last = 0

    def next_id(self) -> str:
        self._last += 1
        return f"{self.prefix}-{self._last}"


class LockedIdAllocator(IdAllocator):
    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self._lock = threading.Lock()

    def next_id(self) -> str:
        with self._lock:
            return super().next_id()


# -- the harness: results in worker order, checked after every run ----------------------------


def ids_are_unique(concurrency, allocator: IdAllocator) -> None:
    for run in concurrency.runs(200):
        got = run(allocator.next_id, workers=4)
        assert len(set(got)) == len(got), f"duplicate ids: {got}"


@pytest.mark.xfail(reason=RACE)
def test_buggy_harness(concurrency):
    ids_are_unique(concurrency, IdAllocator("order"))


def test_fixed_harness(concurrency):
    ids_are_unique(concurrency, LockedIdAllocator("order"))


# -- the body: every id is claimed once in a shared dict --------------------------------------


def claim_new_id(allocator: IdAllocator, issued: dict[str, object]) -> None:
    new_id = allocator.next_id()
    mine = object()
    assert issued.setdefault(new_id, mine) is mine, f"{new_id} was issued twice"


@pytest.fixture
def issued() -> dict[str, object]:
    return {}


@pytest.fixture
def allocator() -> IdAllocator:
    return IdAllocator("order")


@pytest.fixture
def locked_allocator() -> IdAllocator:
    return LockedIdAllocator("order")


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=200)
def test_buggy(allocator, issued, concurrency):
    claim_new_id(allocator, issued)


@pytest.mark.concurrent(workers=4, runs=200)
def test_fixed(locked_allocator, issued, concurrency):
    claim_new_id(locked_allocator, issued)
