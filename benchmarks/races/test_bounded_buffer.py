"""Bounded buffer with check-then-act on both ends.

``put`` checks the length against the capacity and appends afterwards (two producers overfill
the buffer); ``take`` checks for an item and pops afterwards (two consumers pop one item twice:
``IndexError``). The twin does both under a condition's lock.
"""

from __future__ import annotations

import threading
from functools import partial

import pytest

RACE = "check-then-act: buffer overfilled or popped empty"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""


class BoundedBuffer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: list[object] = []

    def put(self, item: object) -> bool:
        if len(self._items) >= self.capacity:
            return False
        self._items.append(item)
        return True

    def take(self) -> object | None:
        if not self._items:
            return None
        return self._items.pop(0)

    def __len__(self) -> int:
        return len(self._items)


class LockedBuffer(BoundedBuffer):
    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._lock = threading.Condition()

    def put(self, item: object) -> bool:
        with self._lock:
            return super().put(item)

    def take(self) -> object | None:
        with self._lock:
            return super().take()


# -- the harness: two producers and two consumers as actors -----------------------------------


def never_overfilled(concurrency, buffer_type: type[BoundedBuffer]) -> None:
    for run in concurrency.runs(200):
        buffer = buffer_type(capacity=1)
        buffer.put("first")
        got = run(partial(buffer.put, "a"), partial(buffer.put, "b"), buffer.take, buffer.take)
        run.observe(tuple(got))
        assert len(buffer) <= buffer.capacity, "overfilled"


@pytest.mark.xfail(reason=RACE)
def test_buggy_harness(concurrency):
    never_overfilled(concurrency, BoundedBuffer)


def test_fixed_harness(concurrency):
    never_overfilled(concurrency, LockedBuffer)


# -- the body: even workers produce, odd workers consume --------------------------------------


def produce_or_consume(buffer: BoundedBuffer, concurrency) -> None:
    if concurrency.worker % 2:
        buffer.take()
    else:
        buffer.put(concurrency.worker)
    concurrency.barrier()  # every worker of this run has put or taken
    assert len(buffer) <= buffer.capacity, "overfilled"


@pytest.fixture
def buffer() -> BoundedBuffer:
    return BoundedBuffer(capacity=1)


@pytest.fixture
def locked_buffer() -> BoundedBuffer:
    return LockedBuffer(capacity=1)


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=200)
def test_buggy(buffer, concurrency):
    produce_or_consume(buffer, concurrency)


@pytest.mark.concurrent(workers=4, runs=200)
def test_fixed(locked_buffer, concurrency):
    produce_or_consume(locked_buffer, concurrency)
