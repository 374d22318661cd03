"""Timer race: a cached token used after it expired.

The client caches an access token (valid 100 ms) and uses it while it has not expired. As
written, the second request checks the token at 90 ms after it was issued and reaches the API
10 ms later, at 100 ms: in time. A request that runs late (a late timer, drawn from the seed)
checks the token just before it expires and reaches the API just after: rejected. The twin
renews a token that has less than 50 ms left, more than any request takes to arrive.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

RACE = "timer race: the cached token was still valid when checked and expired on arrival"

TOKEN_SECONDS = 0.100
ISSUE_SECONDS = 0.010
REQUEST_SECONDS = 0.010
BETWEEN_REQUESTS_SECONDS = 0.070
RENEW_MARGIN_SECONDS = 0.050


class TokenExpired(Exception):
    pass


@dataclass(frozen=True)
class Token:
    expires: float


def now() -> float:
    return asyncio.get_running_loop().time()


class AuthServer:
    async def issue(self) -> Token:
        await asyncio.sleep(ISSUE_SECONDS)
        return Token(expires=now() + TOKEN_SECONDS)


class Api:
    async def call(self, token: Token) -> str:
        await asyncio.sleep(REQUEST_SECONDS)  # the request travels
        if now() >= token.expires:
            raise TokenExpired(f"expired {now() - token.expires:.4f} s ago")
        return "ok"


class TokenCache:
    margin = 0.0

    def __init__(self, auth: AuthServer) -> None:
        self.auth = auth
        self.token: Token | None = None

    async def get(self) -> Token:
        if self.token is None or now() + self.margin >= self.token.expires:
            self.token = await self.auth.issue()
        return self.token


class RenewingTokenCache(TokenCache):
    margin = RENEW_MARGIN_SECONDS  # renew while the token still has this much left


async def two_requests(cache_type: type[TokenCache]) -> None:
    cache, api = cache_type(AuthServer()), Api()
    assert await api.call(await cache.get()) == "ok"
    await asyncio.sleep(BETWEEN_REQUESTS_SECONDS)
    assert await api.call(await cache.get()) == "ok"


# -- the harness: a fresh cache every run ------------------------------------------------


async def never_expired(concurrency, cache_type: type[TokenCache]) -> None:
    for run in concurrency.runs(100):
        await run(lambda: two_requests(cache_type), workers=4)


@pytest.mark.xfail(reason=RACE)
async def test_buggy_harness(concurrency):
    await never_expired(concurrency, TokenCache)


async def test_fixed_harness(concurrency):
    await never_expired(concurrency, RenewingTokenCache)


# -- the body: each worker its own client ---------------------------------------------------


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent
async def test_buggy():
    await two_requests(TokenCache)


@pytest.mark.concurrent
async def test_fixed():
    await two_requests(RenewingTokenCache)
