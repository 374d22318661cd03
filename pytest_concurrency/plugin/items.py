"""What the plugin asks of a collected test: its stash keys, markers, shard, timeouts, ids.

Small functions of a pytest item, shared by the session, the calls and the lock watch.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from types import CodeType
from typing import TYPE_CHECKING, Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.settings import DEFAULT_TIMEOUT, Settings

if TYPE_CHECKING:  # imported where used: an unmarked suite never loads them
    from _pytest.nodes import Node

    from pytest_concurrency.engine.crashes import SeriesFacts
    from pytest_concurrency.engine.entries import AuditEntry
    from pytest_concurrency.engine.leaks import Snapshot
    from pytest_concurrency.plugin.asyncio_fixtures import SharedLoop
    from pytest_concurrency.runners.base import OuterDeadline


SETTINGS_KEY = pytest.StashKey[Settings]()
SERIES_NOTE_KEY: pytest.StashKey[Callable[[SeriesFacts], None]] = pytest.StashKey()
"""In an isolated test's child (plugin/isolation.py): told each series's facts before it runs."""


SHARD_ARG = "concurrency_shard"


LEAK_SNAPSHOT_KEY: pytest.StashKey[Snapshot] = pytest.StashKey()


ITEM_FIXTURES = ("concurrency", "scaling")


ITEM_MARKERS = frozenset({"concurrent", "scaling"})


PYTEST_TIMEOUT_SHARE = 0.8


SERIAL_KEY = pytest.StashKey[str]()
RUN_ALL_MARKED_KEY = pytest.StashKey[bool]()
"""A test ``--concurrency-all`` marked concurrent (not the user): unittest methods too."""
AUDITED_KEY = pytest.StashKey[bool]()
"""A test ``--concurrency-all`` audits: once plainly, then within its allowance."""
AUDIT_ENTRY_KEY: pytest.StashKey[AuditEntry] = pytest.StashKey()
"""What the audit spent on the test, for its entry."""
STARTED_KEY = pytest.StashKey[float]()
"""When the test's setup began (monotonic): about when pytest-timeout's timer started."""
SETTLED_KEY: pytest.StashKey[object] = pytest.StashKey()
"""A marked test's settings or the message why they are wrong, settled once."""
ASYNCIO_PLUGIN = "asyncio"
"""pytest-asyncio's name in the plugin manager (``-p no:asyncio``)."""
SHARED_LOOP_KEY: pytest.StashKey[SharedLoop | str] = pytest.StashKey()
"""The loop pytest-asyncio ran the test's async fixtures on, shared with the concurrent body,
or why it cannot be (see :mod:`pytest_concurrency.plugin.asyncio_fixtures`)."""


def needs_item_hooks(item: pytest.Item, marked: dict[Node, bool]) -> bool:
    """Does this test need the per-test hooks: marked ``concurrent`` or ``scaling``, or using
    the ``concurrency`` or ``scaling`` fixture (``--concurrency-all`` needs them for all)?
    ``marked`` remembers the answer for the markers of each parent node (module, class)."""
    names = getattr(item, "fixturenames", ())
    if any(name in names for name in ITEM_FIXTURES):
        return True
    if any(mark.name in ITEM_MARKERS for mark in item.own_markers):
        return True
    parent = item.parent
    return parent is not None and node_marked(parent, marked)


def node_marked(node: Node, marked: dict[Node, bool]) -> bool:
    answer = marked.get(node)
    if answer is None:
        answer = any(mark.name in ITEM_MARKERS for mark in node.own_markers) or (
            node.parent is not None and node_marked(node.parent, marked)
        )
        marked[node] = answer
    return answer


CHOICE_MARKERS = ("concurrent", "not_concurrent")


def deciding_mark(item: pytest.Item) -> pytest.Mark | None:
    """The mark that decides whether the test runs concurrently: the closest of ``concurrent``
    and ``not_concurrent`` (the function's over its class's over its module's), not_concurrent
    when one node carries both; None when neither is there."""
    chosen: pytest.Mark | None = None
    chosen_node = None
    for node, mark in item.iter_markers_with_node():
        if chosen_node is not None and node is not chosen_node:
            break
        if mark.name not in CHOICE_MARKERS:
            continue
        if chosen is None or (mark.name == "not_concurrent" and chosen.name == "concurrent"):
            chosen, chosen_node = mark, node
    return chosen


def concurrent_marker(item: pytest.Item) -> pytest.Mark | None:
    """The ``concurrent`` mark that applies to the test, unless a closer ``not_concurrent``
    wins (see :func:`deciding_mark`)."""
    mark = deciding_mark(item)
    return mark if mark is not None and mark.name == "concurrent" else None


def not_concurrent_reason(mark: pytest.Mark) -> str:
    """What the summary says of a test its ``not_concurrent`` mark runs once."""
    reason = mark.kwargs.get("reason") or (mark.args[0] if mark.args else None)
    return messages.SERIAL_NOT_CONCURRENT + (f": {reason}" if reason else "")


def is_concurrent(item: pytest.Item) -> bool:
    return concurrent_marker(item) is not None or "concurrency" in getattr(item, "fixturenames", ())


def is_unittest_method(item: pytest.Item) -> bool:
    """A ``unittest.TestCase`` method: unittest runs it (setUp, the method, tearDown), not the
    plugin. (No TestCase exists until ``unittest`` is imported: not imported here for it.)"""
    unittest = sys.modules.get("unittest")
    cls = getattr(item, "cls", None)
    return unittest is not None and isinstance(cls, type) and issubclass(cls, unittest.TestCase)


WARNING_NAMES = {
    "warns": "pytest.warns",
    "catch_warnings": "warnings.catch_warnings",
    "deprecated_call": "pytest.deprecated_call",
}
"""Names in a test body that change the process-wide warning filters, and how they are
spelled to the user."""


def body_names(item: pytest.Function) -> frozenset[str]:
    """The global and attribute names the test body uses (``co_names``), functions and
    lambdas defined inside it included."""
    code = getattr(test_function(item), "__code__", None)
    if not isinstance(code, CodeType):
        return frozenset()
    names: set[str] = set()
    pending = [code]
    while pending:
        current = pending.pop()
        names.update(current.co_names)
        pending.extend(const for const in current.co_consts if isinstance(const, CodeType))
    return frozenset(names)


def warning_checks(item: pytest.Function) -> list[str]:
    """The warning checks the test body uses (``pytest.warns``...), as the user spells them."""
    names = body_names(item)
    return [spelled for name, spelled in WARNING_NAMES.items() if name in names]


def pytest_timeout_settings(item: pytest.Item) -> tuple[float, bool] | None:
    """The timeout pytest-timeout will enforce on this test and whether it counts only the
    call (``func_only``), as pytest-timeout itself resolves them (marker, command line,
    ``PYTEST_TIMEOUT``, ini); None without pytest-timeout or a timeout."""
    plugin = item.config.pluginmanager.get_plugin("timeout")
    if plugin is None:
        return None
    resolve = getattr(plugin, "_get_item_settings", None)
    raw: object = None
    func_only: object = False
    if resolve is not None:
        try:
            settings = resolve(item)
            raw, func_only = settings.timeout, settings.func_only
        except Exception:  # another pytest-timeout: read its marker and options ourselves
            resolve = None
    if resolve is None:
        raw = _timeout_by_hand(item)
    try:
        seconds = float(raw) if raw not in (None, "") else 0.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return (seconds, bool(func_only)) if seconds > 0 else None


def _timeout_by_hand(item: pytest.Item) -> object:
    marker = item.get_closest_marker("timeout")
    raw: object = None
    if marker is not None:
        raw = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
    if raw is None:
        raw = item.config.getoption("timeout", None)
    if raw is None:
        raw = os.environ.get("PYTEST_TIMEOUT") or None
    if raw is None:
        try:
            raw = item.config.getini("timeout")
        except ValueError:
            raw = None
    return raw


def pytest_timeout_seconds(item: pytest.Item) -> float | None:
    """The timeout pytest-timeout will enforce on this test, if that plugin is active."""
    settings = pytest_timeout_settings(item)
    return settings[0] if settings is not None else None


def outer_deadline(
    item: pytest.Item, mode: str, call_started: float | None = None
) -> OuterDeadline | None:
    """pytest-timeout's deadline for this test, counted from its setup, or from its call
    (``call_started``) with ``func_only``; None without one, or before the call with
    ``func_only``."""
    settings = pytest_timeout_settings(item)
    if settings is None:
        return None
    seconds, func_only = settings
    started = call_started if func_only else item.stash.get(STARTED_KEY, None)
    if started is None:
        return None
    from pytest_concurrency.engine.modes import mode_of
    from pytest_concurrency.runners.base import OuterDeadline

    separate = not mode_of(mode).shares_process
    return OuterDeadline.for_mode(started + seconds, seconds, separate)


def run_timeout(item: pytest.Item) -> float:
    """The per-run deadline when none is given: ours, or less than pytest-timeout's, so that
    a hung run is reported with every worker's stack before pytest-timeout ends the test."""
    outer = pytest_timeout_seconds(item)
    if outer is None:
        return DEFAULT_TIMEOUT
    return min(DEFAULT_TIMEOUT, outer * PYTEST_TIMEOUT_SHARE)


def shard_of(item: pytest.Item, shards: int) -> tuple[int, int] | None:
    """(shard index, shard count) of an item made by ``--concurrency-shards=shards``, else
    None."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or SHARD_ARG not in callspec.params:
        return None
    return int(callspec.params[SHARD_ARG]), shards


def test_function(item: pytest.Function) -> Any:
    """The test function itself: pytest-asyncio swaps ``item.obj`` for a synchronous wrapper
    while the test runs; the plugin runs the coroutine function on its own loop instead."""
    function = item.obj
    wrapped = getattr(function, "__wrapped__", None)
    if not inspect.iscoroutinefunction(function) and inspect.iscoroutinefunction(wrapped):
        return wrapped
    return function


def is_async_test(item: pytest.Item) -> bool:
    return isinstance(item, pytest.Function) and inspect.iscoroutinefunction(test_function(item))


def invocation_nodeid(item: pytest.Item) -> str:
    """The test id as the user types it from where pytest was started (nodeids are relative
    to the rootdir, which may be elsewhere)."""
    _, sep, rest = item.nodeid.partition("::")
    here = item.config.invocation_params.dir
    try:
        path = os.path.relpath(item.path, here)
    except ValueError:  # another drive on Windows
        path = str(item.path)
    return f"{path}{sep}{rest}" if sep else path


def xdist_worker_count(config: pytest.Config) -> int:
    """How many pytest-xdist workers share this machine's cores (0: no xdist)."""
    workerinput = getattr(config, "workerinput", None)
    if isinstance(workerinput, dict):
        return int(workerinput.get("workercount", 0) or 0)
    if not config.pluginmanager.hasplugin("dsession"):
        return 0
    count = config.getoption("numprocesses", None)
    return count if isinstance(count, int) else 0


def is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


OUTCOME_INTERRUPTED = "interrupted"


def outcome_word(rep: pytest.TestReport) -> str:
    if hasattr(rep, "wasxfail"):
        return "xfailed" if rep.skipped else "xpassed"
    return rep.outcome
