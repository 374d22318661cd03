"""Iterating a dict while another worker adds to it.

``publish`` loops over the live handler dict while ``subscribe`` and ``unsubscribe`` change it:
``RuntimeError: dictionary changed size during iteration``. The twin mutates under a lock and
publishes to a snapshot taken under the same lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

RACE = "dictionary changed size during iteration"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""

Handler = Callable[[str], None]


def ignore(event: str) -> None:
    del event


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {f"handler-{n}": ignore for n in range(8)}

    def subscribe(self, name: str, handler: Handler) -> None:
        self._handlers[name] = handler

    def unsubscribe(self, name: str) -> None:
        self._handlers.pop(name, None)

    def handlers(self) -> dict[str, Handler]:
        return self._handlers

    def publish(self, event: str) -> int:
        delivered = 0
        for handler in self.handlers().values():
            handler(event)
            delivered += 1
        return delivered


class LockedEventBus(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def subscribe(self, name: str, handler: Handler) -> None:
        with self._lock:
            super().subscribe(name, handler)

    def unsubscribe(self, name: str) -> None:
        with self._lock:
            super().unsubscribe(name)

    def handlers(self) -> dict[str, Handler]:
        with self._lock:
            return dict(self._handlers)


def publish_or_churn(bus: EventBus, concurrency) -> None:
    if concurrency.worker % 2:
        name = f"worker-{concurrency.worker}"
        bus.subscribe(name, ignore)
        bus.unsubscribe(name)
    else:
        bus.publish("tick")


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def locked_bus() -> EventBus:
    return LockedEventBus()


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=200)
def test_buggy(bus, concurrency):
    publish_or_churn(bus, concurrency)


@pytest.mark.concurrent(workers=4, runs=200)
def test_fixed(locked_bus, concurrency):
    publish_or_churn(locked_bus, concurrency)
