"""Timer race: a retry after a timeout charges the card twice.

The client sends the charge and waits 100 ms for the reply; on a timeout it sends it again. The
provider is a server: it keeps working on a request whose client gave up. As written the reply
comes after 80 ms (20 ms on the network, 60 ms of processing), well inside the timeout. A slow
request (a late timer, drawn from the seed) makes the client time out while the provider is
still processing: the retry is charged too. The twin sends an idempotency key, and the provider
charges each key once.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

RACE = "timer race: the retry after a timeout charged the card a second time"

NETWORK_SECONDS = 0.020
PROCESSING_SECONDS = 0.060
TIMEOUT_SECONDS = 0.100
ATTEMPTS = 2


class PaymentFailed(Exception):
    pass


class Provider:
    """The remote side: each request is handled by a task of its own, whoever waits for it."""

    def __init__(self) -> None:
        self.charges: list[str] = []
        self.handling: set[asyncio.Task[str]] = set()

    def request(self, key: str) -> asyncio.Task[str]:
        task = asyncio.get_running_loop().create_task(self.handle(key))
        self.handling.add(task)
        return task

    async def handle(self, key: str) -> str:
        await asyncio.sleep(NETWORK_SECONDS)  # the request travels
        self.charges.append(key)
        await asyncio.sleep(PROCESSING_SECONDS)  # the card network answers
        return "approved"

    async def settle(self) -> None:
        await asyncio.gather(*self.handling)


class IdempotentProvider(Provider):
    def __init__(self) -> None:
        super().__init__()
        self.replies: dict[str, asyncio.Task[str]] = {}

    def request(self, key: str) -> asyncio.Task[str]:
        if key not in self.replies:  # a retry of a key gets the first request's reply
            self.replies[key] = super().request(key)
        return self.replies[key]


async def charge_with_retry(provider: Provider, key: str) -> str:
    for _ in range(ATTEMPTS):
        reply = provider.request(key)
        try:
            return await asyncio.wait_for(asyncio.shield(reply), TIMEOUT_SECONDS)
        except asyncio.TimeoutError:  # TimeoutError on 3.11+, not yet on 3.10
            continue  # the provider may still be working on it
    raise PaymentFailed(key)


async def charged_once(provider: Provider) -> None:
    with contextlib.suppress(PaymentFailed):  # "try later": fine, if not charged twice
        await charge_with_retry(provider, "order-1")
    await provider.settle()
    assert len(provider.charges) <= 1, f"charged {len(provider.charges)} times"


# -- the harness: a fresh provider every run ----------------------------------------------


async def never_charged_twice(concurrency, provider_type: type[Provider]) -> None:
    for run in concurrency.runs(100):
        providers = [provider_type() for _ in range(4)]
        await run(*(lambda p=p: charged_once(p) for p in providers))


@pytest.mark.xfail(reason=RACE)
async def test_buggy_harness(concurrency):
    await never_charged_twice(concurrency, Provider)


async def test_fixed_harness(concurrency):
    await never_charged_twice(concurrency, IdempotentProvider)


# -- the body: each worker pays one order --------------------------------------------------


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent
async def test_buggy():
    await charged_once(Provider())


@pytest.mark.concurrent
async def test_fixed():
    await charged_once(IdempotentProvider())
