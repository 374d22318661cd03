"""The identity of the worker that is running: which worker, which run, which seed.

Every runner sets :data:`CURRENT` at the start of each call it makes, in the thread, task or
process that makes it, so that the ``concurrency`` fixture (one object shared by all workers)
can answer ``.worker`` and ``.run`` for whoever asks. Pure module: no pytest import.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class WorkerContext:
    """Who is running now, as seen from inside a concurrent call.

    One object per worker, set once in that worker's thread, task or process; the runner
    updates ``run`` and ``seed`` before each call (cheaper than a new object per call).
    """

    worker: int
    run: int
    workers: int
    mode: str
    seed: int
    wait_at_barrier: Callable[[float | None], Any]  # asyncio: returns an awaitable


CURRENT: ContextVar[WorkerContext | None] = ContextVar("pytest_concurrency_worker", default=None)


def current() -> WorkerContext | None:
    return CURRENT.get()
