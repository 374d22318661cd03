"""A hit counter shared by every request handler: the lost update, found and fixed.

`hits += 1` reads, adds and writes back; two threads that read the same value both write
value + 1 and one hit is lost. On a GIL build this window holds no call, so CPython never
switches threads inside it on its own: the plugin's seeded perturbation makes it show.
"""

from __future__ import annotations

import functools
import threading

import pytest


class HitCounter:
    def __init__(self) -> None:
        self.hits = 0

    def record(self) -> None:
        self.hits += 1


class LockedHitCounter(HitCounter):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def record(self) -> None:
        with self._lock:
            self.hits += 1


REQUESTS_PER_WORKER = 200


def serve_requests(counter: HitCounter) -> int:
    for _ in range(REQUESTS_PER_WORKER):
        counter.record()
    return counter.hits


@pytest.mark.xfail(reason="race: hits += 1 loses updates between threads", strict=True)
def test_counter_without_lock_loses_hits(concurrency):
    for run in concurrency.runs(50):
        counter = HitCounter()
        run(functools.partial(serve_requests, counter), workers=4)
        run.observe(counter.hits)
        assert counter.hits == 4 * REQUESTS_PER_WORKER


def test_counter_with_lock_counts_every_hit(concurrency):
    for run in concurrency.runs(50):
        counter = LockedHitCounter()
        run(functools.partial(serve_requests, counter), workers=4)
        assert counter.hits == 4 * REQUESTS_PER_WORKER
