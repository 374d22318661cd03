"""Lost update with no call in the window: ``self.hits += 1``.

The read (LOAD_ATTR), the addition and the write (STORE_ATTR) follow one another with no call
and no backward jump, so on a GIL build no thread switch can fall between them however short
the switch interval: repeating the test in threads never shows the race. The twin takes a lock.
"""

from __future__ import annotations

import threading

import pytest

RACE = "lost update: increments are lost"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""


class Counter:
    def __init__(self) -> None:
        self.hits = 0

    def increment(self) -> None:
        self.hits += 1


class LockedCounter(Counter):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def increment(self) -> None:
        with self._lock:
            self.hits += 1


def increment_and_check(counter: Counter, concurrency) -> None:
    counter.increment()
    concurrency.barrier()  # every worker of this run has incremented
    expected = (concurrency.run + 1) * concurrency.workers
    assert counter.hits == expected, f"{expected - counter.hits} increments lost"


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def locked_counter() -> Counter:
    return LockedCounter()


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=200)
def test_buggy(counter, concurrency):
    increment_and_check(counter, concurrency)


@pytest.mark.concurrent(workers=4, runs=200)
def test_fixed(locked_counter, concurrency):
    increment_and_check(locked_counter, concurrency)
