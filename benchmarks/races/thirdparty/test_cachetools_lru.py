"""A ``cachetools.LRUCache`` shared by threads without a lock: its size bookkeeping drifts.

``Cache.__setitem__`` stores a new key and then counts it with ``self.__currsize += 1``: a read,
an addition and a write with no call between them, so on a GIL build no thread switch falls
inside it and plain threads never lose an increment. Two workers storing at once under the
perturbation do, when the perturbation gives way inside the library: ``currsize`` then no
longer equals ``len``, and the cache evicts too late from then on. cachetools documents its
caches as not thread-safe; the test's own code only stores distinct keys (the cache is large
enough never to evict), so the race is entirely the library's, and is found reliably when
``cachetools`` is code under test (``--concurrency-packages=cachetools``). The twin takes a lock
around every use of the cache, as cachetools' documentation asks.
"""

from __future__ import annotations

import threading

import pytest

cachetools = pytest.importorskip("cachetools")

RACE = "LRUCache shared without a lock: currsize no longer counts the items"
"""Why the buggy test fails. Not strict: without the library under test it does not show."""
MAXSIZE = 1000
STORES = 20


class Shared:
    """The application's cache, used without a lock; a new one every run."""

    def __init__(self) -> None:
        self.cache = cachetools.LRUCache(maxsize=MAXSIZE)

    def store(self, key: tuple[int, int], value: int) -> None:
        self.cache[key] = value

    def sizes(self) -> tuple[int, int]:
        return len(self.cache), self.cache.currsize

    def reset(self) -> None:
        self.cache = cachetools.LRUCache(maxsize=MAXSIZE)


class Locked(Shared):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def store(self, key: tuple[int, int], value: int) -> None:
        with self._lock:
            super().store(key, value)

    def sizes(self) -> tuple[int, int]:
        with self._lock:
            return super().sizes()


def store_and_check(shared: Shared, concurrency) -> None:
    for n in range(STORES):
        shared.store((concurrency.worker, n), n)
    concurrency.barrier()  # every worker of this run has stored its keys
    length, currsize = shared.sizes()
    assert length == STORES * concurrency.workers, f"{length} items stored"
    assert currsize == length, f"currsize {currsize} but {length} items"
    concurrency.barrier()  # every worker has checked
    if concurrency.worker == 0:
        shared.reset()


@pytest.mark.xfail(reason=RACE, strict=False)
@pytest.mark.concurrent(workers=4)
def test_buggy(concurrency):
    store_and_check(SHARED, concurrency)


@pytest.mark.concurrent(workers=4)
def test_fixed(concurrency):
    store_and_check(LOCKED, concurrency)


SHARED = Shared()
LOCKED = Locked()
