"""A module-global "current request": one worker renders another worker's user.

``handle`` stores the request's user in a module global and ``render`` reads it back; between
the two another worker's request overwrites it. The twin keeps it in a ``ContextVar``.
"""

from __future__ import annotations

import contextvars

import pytest

RACE = "another worker's user"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""

current_user: str | None = None
_user: contextvars.ContextVar[str] = contextvars.ContextVar("user")


def render() -> str:
    return f"hello {current_user}"


def handle(request: dict[str, str]) -> str:
    global current_user
    current_user = request["user"]
    return render()


def render_safely() -> str:
    return f"hello {_user.get()}"


def handle_safely(request: dict[str, str]) -> str:
    token = _user.set(request["user"])
    try:
        return render_safely()
    finally:
        _user.reset(token)


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=200)
def test_buggy(concurrency):
    user = f"user-{concurrency.worker}"
    assert handle({"user": user}) == f"hello {user}"


@pytest.mark.concurrent(workers=4, runs=200)
def test_fixed(concurrency):
    user = f"user-{concurrency.worker}"
    assert handle_safely({"user": user}) == f"hello {user}"
