"""Lazy singleton: two workers see no instance yet and both construct one.

``Registry.get`` checks ``cls._instance is None`` and assigns afterwards; the worker whose
instance is overwritten keeps a registry nobody else sees. The twin re-checks under a lock.
"""

from __future__ import annotations

import threading

import pytest

RACE = "lazy singleton: two registries"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""


class Registry:
    _instance: Registry | None = None

    def __init__(self) -> None:
        self.plugins: dict[str, object] = {}

    @classmethod
    def get(cls) -> Registry:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


class LockedRegistry(Registry):
    _instance: Registry | None = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> Registry:
        if cls._instance is None:
            with cls._lock:
                if cls._instance is None:
                    cls._instance = cls()
        return cls._instance


@pytest.fixture(autouse=True)
def no_instance_yet():
    Registry._instance = LockedRegistry._instance = None
    yield
    Registry._instance = LockedRegistry._instance = None


# -- the harness: reset between runs, single-threaded ---------------------------------------


def created_once(concurrency, registry: type[Registry]) -> None:
    for run in concurrency.runs(200):
        registry._instance = None
        got = run(registry.get, workers=4)
        assert len({id(instance) for instance in got}) == 1, "two registries"


@pytest.mark.xfail(reason=RACE)
def test_buggy_harness(concurrency):
    created_once(concurrency, Registry)


def test_fixed_harness(concurrency):
    created_once(concurrency, LockedRegistry)


# -- the body: worker 0 resets once every worker has checked ----------------------------------


def get_and_check(registry: type[Registry], concurrency) -> None:
    mine = registry.get()
    concurrency.barrier()  # every worker of this run has its registry
    assert mine is registry.get(), "two registries"
    concurrency.barrier()  # every worker has checked
    if concurrency.worker == 0:
        registry._instance = None


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=200)
def test_buggy(concurrency):
    get_and_check(Registry, concurrency)


@pytest.mark.concurrent(workers=4, runs=200)
def test_fixed(concurrency):
    get_and_check(LockedRegistry, concurrency)
