"""A web service's worker pool, small enough to read in one go.

A listener accepts requests and puts them on a work queue; worker threads take them off and
serve them, one at a time each, until the listener says stop. That is the shape of
``socketserver.ThreadingMixIn``, gunicorn's ``gthread`` worker and most hand-written services:
the request handler runs in several threads at once, so anything it shares (a global, a
connection, a row in a database) is shared state.

In the tests, the plugin's workers *are* the pool: ``run(*pool(handle, requests))`` starts
the listener and the worker threads together, once per run, with a fresh queue each run.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable
from typing import Any

STOP = None
"""What the listener puts on the queue once per worker when there are no more requests."""


def pool(
    handle: Callable[[Any], Any], requests: Iterable[Any], workers: int = 4
) -> list[Callable[[], list[Any]]]:
    """A listener and ``workers`` worker loops sharing one work queue: one callable per thread.

    Each worker returns the responses it sent, so ``run(*pool(...))`` returns
    ``[[], responses of worker 1, responses of worker 2, ...]`` (the listener sends none).
    """
    inbox: queue.Queue[Any] = queue.Queue()

    def listen() -> list[Any]:
        for request in requests:
            inbox.put(request)
        for _ in range(workers):
            inbox.put(STOP)
        return []

    def serve() -> list[Any]:
        responses = []
        while (request := inbox.get()) is not STOP:
            responses.append(handle(request))
        return responses

    return [listen] + [serve] * workers


def responses(results: list[list[Any]]) -> list[Any]:
    """Every response the pool sent in one run, whichever worker sent it."""
    return [response for sent in results for response in sent]
