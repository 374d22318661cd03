"""A generator shared by threads: ``ValueError: generator already executing``.

A generator is not thread-safe: while one worker runs inside it, ``next()`` from another raises.
The twin hands out items through a lock.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator

import pytest

RACE = "generator already executing"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""


def numbered(lines: Iterable[str]) -> Iterator[str]:
    for number, line in enumerate(lines, 1):
        yield f"{number}: {line.strip()}"


class LockedIterator:
    def __init__(self, items: Iterator[str]) -> None:
        self._items = items
        self._lock = threading.Lock()

    def __iter__(self) -> LockedIterator:
        return self

    def __next__(self) -> str:
        with self._lock:
            return next(self._items)


def read_lines(lines: Iterator[str]) -> None:
    for _ in range(3):
        assert next(lines)


@pytest.fixture
def lines() -> Iterator[str]:
    return numbered(itertools.repeat(" log line "))


@pytest.fixture
def locked_lines() -> Iterator[str]:
    return LockedIterator(numbered(itertools.repeat(" log line ")))


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=200)
def test_buggy(lines, concurrency):
    read_lines(lines)


@pytest.mark.concurrent(workers=4, runs=200)
def test_fixed(locked_lines, concurrency):
    read_lines(locked_lines)
