"""pytest-asyncio's async fixtures and a concurrent async body on one event loop.

pytest-asyncio runs each async fixture on the event loop of its ``loop_scope`` (1.x: one
``asyncio.Runner`` per scope, the fixtures ``_<scope>_scoped_runner``; before 1.0 the
``event_loop`` fixture, found for function loop scope only), a loop that does not run between
its calls: during the test's call it stands still. A concurrent body must run its tasks on
that loop, or what the fixtures made on it (a server, a future, a lock) never answers. So, for
a concurrent test that uses such fixtures, the loop is looked up once they are set up and the
asyncio runner borrows it for the call (``runners/aio_loop.AdoptedLoop``: hosted in the
plugin's thread with every wait bounded, its ready task steps in the seeded order when it is
one of asyncio's own loops, FIFO otherwise), then hands it back, stopped, for the fixtures'
teardown.

Fixtures on more than one loop (several loop scopes) are refused at setup, before any of them
runs, with the fix; so is a loop that cannot be found, or is closed or already running.
Registered by :meth:`~pytest_concurrency.plugin.session.ConcurrencySession.activate` only when
pytest-asyncio is active; pytest-asyncio itself is never imported: what it decides is read off
the fixtures the way it reads them (``_force_asyncio_fixture``, ``_loop_scope``, its ini keys).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from pytest_concurrency import messages
from pytest_concurrency.plugin.items import SERIAL_KEY, SHARED_LOOP_KEY, is_async_test

if TYPE_CHECKING:
    from pytest_concurrency.plugin.session import ConcurrencySession

FIXTURE_SCOPE = "fixture-scope"
"""The value of ``asyncio_default_fixture_loop_scope`` that means: each fixture's own scope."""
SCOPES = ("function", "class", "module", "package", "session")


@dataclass(frozen=True)
class LoopUse:
    """The async fixtures of a test that pytest-asyncio runs, all on the loop of ``scope``."""

    scope: str
    fixtures: tuple[str, ...]


@dataclass(frozen=True)
class SharedLoop:
    """The loop those fixtures ran on, found once they are set up: the body's tasks run there."""

    loop: asyncio.AbstractEventLoop
    scope: str
    fixtures: tuple[str, ...]


def _ini(config: pytest.Config, name: str) -> object:
    try:
        return config.getini(name)
    except ValueError:  # an ini key this version of pytest-asyncio does not declare
        return None


def asyncio_mode(config: pytest.Config) -> str:
    return str(config.getoption("asyncio_mode", None) or _ini(config, "asyncio_mode") or "strict")


def fixture_loop_scopes(item: pytest.Function) -> dict[str, str]:
    """The test's fixtures (its whole closure) that pytest-asyncio runs on an event loop, each
    with the loop_scope it gets there: the fixture's own ``loop_scope``, else the ini option
    ``asyncio_default_fixture_loop_scope``, else the fixture's scope. In strict mode those are
    the ``@pytest_asyncio.fixture`` ones; in auto mode every async fixture too."""
    auto = asyncio_mode(item.config) == "auto"
    default = _ini(item.config, "asyncio_default_fixture_loop_scope")
    scopes: dict[str, str] = {}
    for name in item.fixturenames:
        fixturedefs = item._fixtureinfo.name2fixturedefs.get(name)
        if not fixturedefs:
            continue
        fixturedef = fixturedefs[-1]  # the closest definition is the one used
        function = getattr(fixturedef.func, "__func__", fixturedef.func)
        is_async = inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
        if not getattr(function, "_force_asyncio_fixture", False) and not (auto and is_async):
            continue
        fallback = default if default and default != FIXTURE_SCOPE else fixturedef.scope
        scopes[name] = str(getattr(function, "_loop_scope", None) or fallback)
    return scopes


def loop_use(item: pytest.Function) -> LoopUse | str | None:
    """On which loop the test's pytest-asyncio fixtures run: None when it has none, the
    refusal when they run on several."""
    scopes = fixture_loop_scopes(item)
    if not scopes:
        return None
    distinct = sorted(set(scopes.values()), key=_scope_rank)
    if len(distinct) > 1:
        listed = ", ".join(f"{name} on loop_scope {scope!r}" for name, scope in scopes.items())
        return messages.ASYNCIO_FIXTURES_ON_SEVERAL_LOOPS.format(
            nodeid=item.nodeid, fixtures=listed, scope=distinct[-1]
        )
    return LoopUse(distinct[0], tuple(scopes))


def _scope_rank(scope: str) -> int:
    return SCOPES.index(scope) if scope in SCOPES else len(SCOPES)


def find_loop(item: pytest.Function, use: LoopUse) -> SharedLoop | str:
    """The loop pytest-asyncio ran the fixtures on (they are set up), or why it cannot be used."""
    names = ", ".join(use.fixtures)
    loop: object = _runner_loop(item, use.scope)
    if loop is None and use.scope == "function":  # pytest-asyncio before 1.0
        loop = item.funcargs.get("event_loop")
    if not isinstance(loop, asyncio.AbstractEventLoop):
        return messages.ASYNCIO_FIXTURES_LOOP_NOT_FOUND.format(
            nodeid=item.nodeid, names=names, scope=use.scope
        )
    state = (
        messages.ASYNCIO_LOOP_CLOSED
        if loop.is_closed()
        else messages.ASYNCIO_LOOP_RUNNING
        if loop.is_running()
        else None
    )
    if state is not None:
        return messages.ASYNCIO_FIXTURES_LOOP_UNUSABLE.format(
            nodeid=item.nodeid, names=names, state=state
        )
    return SharedLoop(loop, use.scope, use.fixtures)


def _runner_loop(item: pytest.Function, scope: str) -> asyncio.AbstractEventLoop | None:
    """The loop of pytest-asyncio 1.x's runner of ``scope``: the fixtures asked for it when
    they were set up, so this is the cached one, never a new one."""
    try:
        runner = item._request.getfixturevalue(f"_{scope}_scoped_runner")
        loop = runner.get_loop()
    except (pytest.FixtureLookupError, AttributeError, RuntimeError):
        return None
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def shared_loop(item: pytest.Item) -> asyncio.AbstractEventLoop | None:
    """The loop the test's asyncio runs borrow; None: the plugin's own. Raises the refusal
    (fixtures on several loops) for a synchronous test that starts asyncio runs."""
    shared = item.stash.get(SHARED_LOOP_KEY, None)
    if isinstance(shared, str):
        from pytest_concurrency.errors import ConcurrencyUsageError

        raise ConcurrencyUsageError(shared)
    return shared.loop if isinstance(shared, SharedLoop) else None


def shared_loop_lines(item: pytest.Item, perturb: bool) -> list[str]:
    """The report's line on the loop the tasks ran on, when it was pytest-asyncio's."""
    shared = item.stash.get(SHARED_LOOP_KEY, None)
    if not isinstance(shared, SharedLoop):
        return []
    from pytest_concurrency.runners.aio_loop import can_order

    if not can_order(shared.loop):
        order = messages.ASYNCIO_ORDER_FIFO.format(loop=type(shared.loop).__qualname__)
    else:
        order = messages.ASYNCIO_ORDER_SEEDED if perturb else messages.ASYNCIO_ORDER_UNPERTURBED
    note = messages.ASYNCIO_FIXTURES_LOOP_NOTE.format(
        scope=shared.scope, names=", ".join(shared.fixtures), order=order
    )
    if shared.loop.is_running():  # given back: only a loop a synchronous call blocks runs on
        return [note, messages.ASYNCIO_LOOP_LEFT_BLOCKED]
    return [note]


class AsyncioFixtureHooks:
    """A concurrent test's setup: fixtures on several loops are refused before they run
    (:meth:`before_fixtures`, from the session's setup); once they ran, their loop is found for
    the call (``SHARED_LOOP_KEY``)."""

    def __init__(self, session: ConcurrencySession) -> None:
        self.session = session

    def before_fixtures(self, item: pytest.Item) -> None:
        use = self.loop_use(item)
        if isinstance(use, str):
            if is_async_test(item):
                pytest.fail(use, pytrace=False)
            item.stash[SHARED_LOOP_KEY] = use  # a sync body: refused if it starts asyncio runs

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        result = yield  # never fails before this: other plugins' setup wrappers must run
        use = self.loop_use(item)
        if isinstance(use, LoopUse) and isinstance(item, pytest.Function):
            shared = find_loop(item, use)
            item.stash[SHARED_LOOP_KEY] = shared
            if isinstance(shared, str) and is_async_test(item):
                pytest.fail(shared, pytrace=False)
        return result

    def loop_use(self, item: pytest.Item) -> LoopUse | str | None:
        """For a concurrent test (marked, or using ``concurrency``) that runs concurrently."""
        if not isinstance(item, pytest.Function) or SERIAL_KEY in item.stash:
            return None
        settled = self.session.marked_settings(item)
        if isinstance(settled, str):
            return None  # its setup fails with that message
        if settled is None and "concurrency" not in item.fixturenames:
            return None
        return loop_use(item)
