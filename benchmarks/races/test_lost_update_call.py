"""Lost update with a call in the window: read the stock, compute, write it back.

``receive`` reads ``self.stock``, calls a helper, then writes the sum. The call's entry checks
the eval breaker, so a short switch interval alone can already switch threads inside the window;
seeded give-ways make it routine. The twin holds a lock across the read-modify-write.
"""

from __future__ import annotations

import threading

import pytest

RACE = "lost update: deliveries are lost"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""


def add(quantity: int, delivered: int) -> int:
    return quantity + delivered


class Inventory:
    def __init__(self) -> None:
        self.stock = 0

    def receive(self, delivered: int) -> None:
        current = self.stock
        self.stock = add(current, delivered)


class LockedInventory(Inventory):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def receive(self, delivered: int) -> None:
        with self._lock:
            super().receive(delivered)


def receive_and_check(inventory: Inventory, concurrency) -> None:
    inventory.receive(1)
    concurrency.barrier()  # every worker of this run has delivered
    expected = (concurrency.run + 1) * concurrency.workers
    assert inventory.stock == expected, f"{expected - inventory.stock} deliveries lost"


@pytest.fixture
def inventory() -> Inventory:
    return Inventory()


@pytest.fixture
def locked_inventory() -> Inventory:
    return LockedInventory()


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=200)
def test_buggy(inventory, concurrency):
    receive_and_check(inventory, concurrency)


@pytest.mark.concurrent(workers=4, runs=200)
def test_fixed(locked_inventory, concurrency):
    receive_and_check(locked_inventory, concurrency)
