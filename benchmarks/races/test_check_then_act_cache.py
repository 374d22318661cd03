"""Check-then-act in a cache: two workers miss at once and both create the value.

``get_or_create`` tests ``key in self._data`` and stores its own new value afterwards; a worker
that missed too returns a connection nobody else uses (and the first one leaks). The twin
re-checks under a lock (double-checked locking).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

import pytest

RACE = "check-then-act: two connections for one key"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""


class Connection:
    def __init__(self, name: str) -> None:
        self.name = name


class Cache:
    def __init__(self, factory: Callable[[str], Connection]) -> None:
        self._factory = factory
        self._data: dict[str, Connection] = {}

    def get_or_create(self, key: str) -> Connection:
        if key in self._data:
            return self._data[key]
        value = self._factory(key)
        self._data[key] = value
        return value


class LockedCache(Cache):
    def __init__(self, factory: Callable[[str], Connection]) -> None:
        super().__init__(factory)
        self._lock = threading.Lock()

    def get_or_create(self, key: str) -> Connection:
        if key in self._data:
            return self._data[key]
        with self._lock:
            return super().get_or_create(key)


# -- the harness: a fresh cache every run -------------------------------------------------


def one_connection_per_key(concurrency, cache_type: type[Cache]) -> None:
    for run in concurrency.runs(200):
        cache = cache_type(Connection)
        got = run(partial(cache.get_or_create, "db"), workers=4)
        assert len({id(connection) for connection in got}) == 1, "two connections for one key"


@pytest.mark.xfail(reason=RACE)
def test_buggy_harness(concurrency):
    one_connection_per_key(concurrency, Cache)


def test_fixed_harness(concurrency):
    one_connection_per_key(concurrency, LockedCache)


# -- the body: one shared cache, a new key every run ----------------------------------------


def get_and_check(cache: Cache, concurrency) -> None:
    key = f"db-{concurrency.run}"
    mine = cache.get_or_create(key)
    concurrency.barrier()  # every worker of this run has its connection
    assert mine is cache.get_or_create(key), "two connections for one key"


@pytest.fixture
def cache() -> Cache:
    return Cache(Connection)


@pytest.fixture
def locked_cache() -> Cache:
    return LockedCache(Connection)


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=200)
def test_buggy(cache, concurrency):
    get_and_check(cache, concurrency)


@pytest.mark.concurrent(workers=4, runs=200)
def test_fixed(locked_cache, concurrency):
    get_and_check(locked_cache, concurrency)
