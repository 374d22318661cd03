"""A check-then-act cache: two requests miss at once and both fetch.

``ProfileCache.get`` looks for the profile, and fetches it from the user service if it is not
there. Requests for the same user that arrive together all miss, and the user service gets
every one of them: the stampede a cache was meant to prevent. The fix takes a lock and checks
again under it.

``functools.cache`` does not prevent it either: its documentation says the wrapped function
"may be called more than once if another thread makes an additional call before the initial
call has been completed and cached". That is shown found too.

This file uses the ``concurrent`` marker: the test body runs in 4 threads at once, 100 times,
and the fixtures (the cache and the user service) are set up once and shared by every run.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import pytest


class UserService:
    """The remote service behind the cache; it remembers every request it got."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def fetch_profile(self, user: str) -> dict[str, str]:
        self.requests.append(user)  # list.append is atomic: the count below is exact
        return {"user": user, "name": user.title()}


class ProfileCache:
    def __init__(self, fetch: Callable[[str], dict[str, str]]) -> None:
        self._fetch = fetch
        self._profiles: dict[str, dict[str, str]] = {}

    def get(self, user: str) -> dict[str, str]:
        if user not in self._profiles:  # check ...
            self._profiles[user] = self._fetch(user)  # ... then act
        return self._profiles[user]


class LockedProfileCache(ProfileCache):
    def __init__(self, fetch: Callable[[str], dict[str, str]]) -> None:
        super().__init__(fetch)
        self._lock = threading.Lock()

    def get(self, user: str) -> dict[str, str]:
        if user not in self._profiles:
            with self._lock:
                if user not in self._profiles:  # checked again, under the lock
                    self._profiles[user] = self._fetch(user)
        return self._profiles[user]


@pytest.fixture
def user_service():
    return UserService()


@pytest.fixture
def cache(user_service):
    return ProfileCache(user_service.fetch_profile)


@pytest.fixture
def locked_cache(user_service):
    return LockedProfileCache(user_service.fetch_profile)


@pytest.mark.xfail(strict=True, reason="race: requests that miss together all fetch")
@pytest.mark.concurrent(workers=4, runs=100)
def test_cache_fetches_twice(cache, user_service, concurrency):
    user = f"user-{concurrency.run}"  # a new user every run: the cache misses
    cache.get(user)
    concurrency.barrier()  # every worker of this run has its profile
    assert user_service.requests.count(user) == 1


@pytest.mark.concurrent(workers=4, runs=100)
def test_locked_cache_fetches_once(locked_cache, user_service, concurrency):
    user = f"user-{concurrency.run}"
    locked_cache.get(user)
    concurrency.barrier()
    assert user_service.requests.count(user) == 1


# -- functools.cache keeps its dictionary safe, not your backend -------------------------------

EXCHANGE_RATE_REQUESTS: list[str] = []


@functools.cache
def exchange_rate(currency: str) -> float:
    EXCHANGE_RATE_REQUESTS.append(currency)  # the request to the rates service
    return {"EUR": 1.08, "GBP": 1.27}.get(currency, 1.0)


@pytest.fixture
def empty_rates_cache():
    exchange_rate.cache_clear()
    EXCHANGE_RATE_REQUESTS.clear()


@pytest.mark.xfail(strict=True, reason="race: functools.cache calls the function again on a miss")
@pytest.mark.concurrent(workers=4, runs=100)
def test_functools_cache_can_fetch_twice(empty_rates_cache, concurrency):
    currency = f"X{concurrency.run:02}"  # a new currency every run: the cache misses
    exchange_rate(currency)
    concurrency.barrier()
    assert EXCHANGE_RATE_REQUESTS.count(currency) == 1
