"""The hooks: collection, the call wrapper, reports and the summary.

:class:`ConcurrencySession` is registered for every pytest session; its hooks run once per
session or once per report. The per-test hooks (:class:`ItemHooks`, and the lock watch of
:mod:`pytest_concurrency.plugin.lockwatch`) are registered only when collection finds a test that
needs them (see :func:`needs_item_hooks`), and the machinery they drive (harness, runners,
perturbation, leak snapshots) is imported only then: a suite that never uses the plugin pays
for one pass over its collected items and nothing per test.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Generator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine import cores
from pytest_concurrency.engine.modes import COROUTINE_MODE, mode_of
from pytest_concurrency.engine.settings import Settings
from pytest_concurrency.errors import SettingsError
from pytest_concurrency.plugin import calls, harness_entries, summary
from pytest_concurrency.plugin.entries import (
    REPORT_ATTRIBUTE,
    record_entry,
    take_entries,
)
from pytest_concurrency.plugin.gilwatch import GilWatch
from pytest_concurrency.plugin.items import (
    ASYNCIO_PLUGIN,
    AUDITED_KEY,
    LEAK_SNAPSHOT_KEY,
    RUN_ALL_MARKED_KEY,
    SERIAL_KEY,
    SETTINGS_KEY,
    SETTLED_KEY,
    SHARD_ARG,
    STARTED_KEY,
    WARNING_NAMES,
    body_names,
    concurrent_marker,
    deciding_mark,
    is_async_test,
    is_concurrent,
    is_unittest_method,
    needs_item_hooks,
    not_concurrent_reason,
    xdist_worker_count,
)

if TYPE_CHECKING:  # imported where used: an unmarked suite never loads them
    from _pytest.nodes import Node

    from pytest_concurrency.engine.audit import AuditLedger
    from pytest_concurrency.engine.entries import Entry
    from pytest_concurrency.engine.memory import Memory, Remembered
    from pytest_concurrency.engine.owncode import CodeFilter
    from pytest_concurrency.engine.undertest import Package
    from pytest_concurrency.plugin.asyncio_fixtures import AsyncioFixtureHooks
    from pytest_concurrency.plugin.crash_notes import CrashNotes


ITEM_HOOKS_NAME = "concurrency-item-hooks"
CODE_UNDER_TEST_HOOKS_NAME = "concurrency-code-under-test"
ASYNCIO_FIXTURE_HOOKS_NAME = "concurrency-asyncio-fixtures"
FIXTURE_LOOKUP_NAMES = ("getfixturevalue",)
DOCTEST_MODULE = "_pytest.doctest"
"""Where pytest's doctest items come from (``--doctest-modules``, ``--doctest-glob``)."""


class ConcurrencySession:
    """All of the plugin's hooks, for one pytest session."""

    def __init__(
        self,
        config: pytest.Config,
        *,
        settings: Settings,
        session_seed: int,
        run_all: bool,
        unsafe_fixtures: Iterable[str],
        json_path: Path | None,
        plot_dir: Path | None,
        replay_runs: int | None = None,
        memory: Memory | None = None,
        memory_in_use: bool = False,
        given_settings: frozenset[str] = frozenset(),
        audit_cost: float | None = None,
        unsafe_names: Iterable[str] = (),
    ) -> None:
        self.config = config
        self.settings = settings
        self.session_seed = session_seed
        self.run_all = run_all
        self.unsafe_fixtures = frozenset(unsafe_fixtures)
        self.unsafe_names = tuple(unsafe_names)  # more thread-unsafe calls (the ini list)
        self.json_path = json_path
        self.plot_dir = plot_dir
        self.replay_runs = replay_runs
        self.given_settings = given_settings  # fields set by the command line, env or ini
        self._packages: dict[tuple[str, ...], list[Package]] = {}
        self.memory = memory  # None: off, or no cache
        self.memory_in_use = memory_in_use and memory is not None  # no seed given: try them
        self.entries: list[Entry] = []
        self.abandoned_threads: list[str] = []
        self.abandoned_idents: frozenset[int] = frozenset()
        self.leaked: list[str] = []
        self.plot_lines: list[str] = []
        self.json_error: str | None = None  # the warning when the JSON report was not written
        self.item_hooks: ItemHooks | None = None
        self.asyncio_fixtures: AsyncioFixtureHooks | None = None  # with pytest-asyncio only
        self.running: pytest.Item | None = None  # a test from its setup to its call's report
        self.gil = GilWatch(settings.gil)  # the GIL state: read now, after collection, per test
        self.crash_notes: CrashNotes | None = None  # the xdist controller's, once workers start
        self.audit: AuditLedger | None = None  # run-all's audit (engine/audit.py), or None
        if run_all and "runs" not in given_settings and replay_runs is None:
            from pytest_concurrency.engine.audit import AuditLedger

            cost = audit_cost if audit_cost is not None else AuditLedger().cost
            self.audit = AuditLedger(cost=cost, budget=settings.budget)

    # -- what the session says: header, summary, files (see summary.py) ---------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return summary.header_lines(self, config)

    def pytest_report_collectionfinish(self) -> list[str]:
        return self.gil.collection_finished()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        summary.write_summary(self, terminalreporter)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        summary.finish_session(self)
        if self.crash_notes is not None:
            self.crash_notes.remove()

    # -- pytest-xdist: which concurrent test a worker that died was running ------------------

    def give_crash_notes(self, node: object) -> None:
        if self.crash_notes is None:
            from pytest_concurrency.plugin.crash_notes import CrashNotes

            self.crash_notes = CrashNotes()
        self.crash_notes.give_to(node)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport) -> None:
        if self.crash_notes is not None:
            self.crash_notes.complete(crashitem, report)

    def pytest_unconfigure(self) -> None:
        owncode = sys.modules.get("pytest_concurrency.engine.owncode")
        if owncode is not None:  # loaded: activate() may have given the session's roots
            owncode.forget_session_roots(self.session_roots)

    @functools.cached_property
    def budget(self) -> cores.CoreBudget:
        """The usable cores (affinity and cgroup quota), read when first needed."""
        return cores.core_budget()

    def activate(self) -> None:
        """Register the per-test hooks (once): collection found a test that needs them."""
        if self.item_hooks is not None:
            return
        from pytest_concurrency.engine import owncode
        from pytest_concurrency.plugin.lockwatch import (  # lock tracking, deadlocks (issue 5)
            LOCKWATCH_NAME,
            LockWatch,
        )

        owncode.use_session_roots(self.session_roots)  # the code under test between tests
        self.item_hooks = ItemHooks(self)
        manager = self.config.pluginmanager
        manager.register(self.item_hooks, ITEM_HOOKS_NAME)
        manager.register(CodeUnderTestHooks(self), CODE_UNDER_TEST_HOOKS_NAME)
        manager.register(LockWatch(self), LOCKWATCH_NAME)
        if manager.hasplugin(ASYNCIO_PLUGIN):  # pytest-asyncio: its fixtures share their loop
            from pytest_concurrency.plugin.asyncio_fixtures import AsyncioFixtureHooks

            self.asyncio_fixtures = AsyncioFixtureHooks(self)
            manager.register(self.asyncio_fixtures, ASYNCIO_FIXTURE_HOOKS_NAME)

    # -- header -----------------------------------------------------------------------------

    # -- collection -------------------------------------------------------------------------

    def generate_shards(self, metafunc: pytest.Metafunc) -> None:
        """``--concurrency-shards=K``: each concurrent test becomes K items, one per shard."""
        shards = self.settings.shards
        if shards < 2 or not self.shardable(metafunc):
            return
        metafunc.fixturenames.append(SHARD_ARG)
        metafunc.parametrize(
            SHARD_ARG, range(shards), ids=[f"shard{index}of{shards}" for index in range(shards)]
        )

    def shardable(self, metafunc: pytest.Metafunc) -> bool:
        mark = deciding_mark(metafunc.definition)
        if mark is not None:
            return mark.name == "concurrent"
        if "concurrency" in metafunc.fixturenames:
            return True
        return self.run_all and not self.unsafe_fixtures.intersection(metafunc.fixturenames)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if not self.run_all:
            marked: dict[Node, bool] = {}
            if any(needs_item_hooks(item, marked) for item in items):
                self.activate()
            return
        self.activate()
        audited = 0
        for item in items:
            reason = self.serial_reason(item)
            if reason is not None:
                item.stash[SERIAL_KEY] = reason
            elif concurrent_marker(item) is None:
                item.add_marker(pytest.mark.concurrent())
                item.stash[RUN_ALL_MARKED_KEY] = True
                if self.audit is not None and "concurrency" not in getattr(
                    item, "fixturenames", ()
                ):
                    item.stash[AUDITED_KEY] = True
                    audited += 1
        if self.audit is not None:  # under pytest-xdist, each worker runs its share
            self.audit.tests_left = -(-audited // max(1, xdist_worker_count(self.config)))

    def serial_reason(self, item: pytest.Item) -> str | None:
        """Why ``--concurrency-all`` runs this test once, normally; None to run it concurrently."""
        mark = deciding_mark(item)
        if mark is not None and mark.name == "not_concurrent":
            return not_concurrent_reason(mark)
        if not isinstance(item, pytest.Function):
            doctest = type(item).__module__ == DOCTEST_MODULE
            return messages.SERIAL_DOCTEST if doctest else messages.SERIAL_NOT_FUNCTION
        if mark is not None:  # marked concurrent: its setup says what is wrong, if anything
            return None
        if is_unittest_method(item):  # run concurrently, one instance per worker call
            from pytest_concurrency.plugin.cases import serial_reason

            reason = serial_reason(item)
            if reason is not None:
                return reason
        unsafe = sorted(self.unsafe_fixtures.intersection(item.fixturenames))
        if unsafe:
            return messages.SERIAL_UNSAFE_FIXTURE.format(names=", ".join(unsafe))
        names = body_names(item)
        if any(name in names for name in FIXTURE_LOOKUP_NAMES):
            return messages.SERIAL_GETFIXTUREVALUE
        for name in WARNING_NAMES:
            if name in names:
                return messages.SERIAL_WARNINGS.format(name=name)
        from pytest_concurrency.plugin.unsafe import unsafe_reasons

        reasons = unsafe_reasons(item, self.unsafe_names)
        return reasons[0] if reasons else None

    # -- setup: settle the test's settings, or fail it with a clear word ------------------

    def setup_item(self, item: pytest.Item) -> None:
        self.running = item
        item.stash[STARTED_KEY] = time.monotonic()
        if self.settings.leaks != "off" and is_concurrent(item):
            from pytest_concurrency.engine.leaks import take_snapshot

            item.stash[LEAK_SNAPSHOT_KEY] = take_snapshot()
        reason = item.stash.get(SERIAL_KEY, None)
        if reason is not None:
            from pytest_concurrency.engine.report import serial_entry

            record_entry(item, serial_entry(item.nodeid, reason))
            return
        if is_concurrent(item):
            self.gil.before_test(item)  # under --concurrency-gil=fail, may fail the setup
        settled = self.marked_settings(item)
        if isinstance(settled, str):
            pytest.fail(settled, pytrace=False)
        if settled is not None and settled.isolate and not hasattr(os, "fork"):
            pytest.fail(messages.ISOLATE_UNAVAILABLE.format(nodeid=item.nodeid), pytrace=False)
        if settled is not None:
            item.stash[SETTINGS_KEY] = settled
            if is_unittest_method(item) and isinstance(item, pytest.Function):
                # pytest calls a TestCase method's runtest(), not pytest_pyfunc_call
                item.runtest = functools.partial(calls.call_unittest, self, item)  # type: ignore[method-assign]
        elif item.get_closest_marker("concurrent") is not None:  # a closer not_concurrent won
            from pytest_concurrency.engine.report import serial_entry

            mark = deciding_mark(item)
            if mark is not None:
                record_entry(item, serial_entry(item.nodeid, not_concurrent_reason(mark)))
        if self.asyncio_fixtures is not None:  # before any fixture runs
            self.asyncio_fixtures.before_fixtures(item)

    def isolated(self, item: pytest.Item) -> bool:
        """Does this test run in a supervised child (``--concurrency-isolate``, or
        ``isolate=True`` on its marker)? A harness test follows the session's setting."""
        settled = self.marked_settings(item)
        if isinstance(settled, Settings):
            wanted = settled.isolate
        else:
            wanted = self.settings.isolate and "concurrency" in getattr(item, "fixturenames", ())
        if not wanted:
            return False
        from pytest_concurrency.plugin.isolation import available

        return available()

    def packages_for(self, names: tuple[str, ...]) -> list[Package]:
        """The packages under test beside the rootdir for these names (found once); raises
        :class:`~pytest_concurrency.engine.undertest.UnknownPackage`."""
        found = self._packages.get(names)
        if found is None:
            from pytest_concurrency.engine.undertest import packages_under_test

            found = self._packages[names] = packages_under_test(self.config.rootpath, names)
        return found

    def unknown_package(self, names: tuple[str, ...]) -> str | None:
        """The first of ``names`` that cannot be found, or None."""
        from pytest_concurrency.engine.undertest import UnknownPackage

        try:
            self.packages_for(names)
        except UnknownPackage as error:
            return error.name
        return None

    def session_roots(self) -> list[Path]:
        """The code under test between tests: the rootdir and the session's packages."""
        packages = self.packages_for(self.settings.packages)
        return [self.config.rootpath, *(Path(package.location) for package in packages)]

    def code_filter(self, item: pytest.Item, settings: Settings | None = None) -> CodeFilter:
        """The one answer to "is this file code under test?" while ``item`` runs."""
        if settings is None:
            settled = self.marked_settings(item)
            settings = settled if isinstance(settled, Settings) else self.settings
        from pytest_concurrency.engine import owncode

        return owncode.filter_for(tuple(str(root) for root in self.roots(item, settings)))

    def roots(self, item: pytest.Item, settings: Settings) -> list[Path]:
        """Where this test's code under test lives: the rootdir, the test's folder, and the
        packages under test (the project's own, wherever installed, and the named ones)."""
        roots = [self.config.rootpath, item.path.parent]
        roots.extend(Path(package.location) for package in self.packages_for(settings.packages))
        return roots

    def remembered(self, item: pytest.Item, settings: Settings) -> Remembered | None:
        """This test's remembered failing seed, to try first; None when there is none or a
        seed was given (by the marker, the command line, a reproduction line)."""
        if not self.memory_in_use or self.memory is None or settings.seed is not None:
            return None
        if self.replay_runs is not None:
            return None
        return self.memory.get(item.nodeid)

    def marked_settings(self, item: pytest.Item) -> Settings | str | None:
        """A marked test's settings, or why they are wrong (the message its setup fails with);
        None when the test is not marked. Settled once per test, for every hook that asks."""
        settled = item.stash.get(SETTLED_KEY, SETTLED_KEY)
        if settled is SETTLED_KEY:
            settled = item.stash[SETTLED_KEY] = self.settle_marker(item)
        return settled  # type: ignore[return-value]

    def settle_marker(self, item: pytest.Item) -> Settings | str | None:
        marker = concurrent_marker(item)
        if marker is None:
            return None
        if not isinstance(item, pytest.Function):
            return messages.NOT_A_FUNCTION.format(nodeid=item.nodeid)
        if is_unittest_method(item) and not item.stash.get(RUN_ALL_MARKED_KEY, False):
            return messages.UNITTEST_METHOD.format(nodeid=item.nodeid)
        if marker.args:
            return messages.POSITIONAL_MARKER_ARGS.format(args=marker.args, nodeid=item.nodeid)
        settings_or_error = self.marker_settings(item, marker.kwargs)
        if isinstance(settings_or_error, SettingsError):
            return str(settings_or_error)
        settings = settings_or_error
        if settings.packages != self.settings.packages:
            unknown = self.unknown_package(settings.packages)
            if unknown is not None:
                where = messages.PACKAGES_IN_MARKER.format(nodeid=item.nodeid)
                return messages.UNKNOWN_PACKAGE.format(where=where, name=unknown)
        if is_async_test(item) and "mode" not in marker.kwargs:
            settings = dataclasses.replace(settings, mode=COROUTINE_MODE)
        runs_coroutines = mode_of(settings.mode).runs_coroutines
        if is_async_test(item) != runs_coroutines:
            template = (
                messages.SYNC_BODY_IN_ASYNCIO
                if runs_coroutines
                else messages.ASYNC_BODY_IN_OTHER_MODE
            )
            return template.format(nodeid=item.nodeid, mode=settings.mode)
        if item.stash.get(AUDITED_KEY, False) and "workers" not in self.given_settings:
            from pytest_concurrency.engine.audit import AUDIT_WORKERS

            settings = dataclasses.replace(settings, workers=AUDIT_WORKERS)
        return settings

    def marker_settings(
        self, item: pytest.Item, kwargs: Mapping[str, Any]
    ) -> Settings | SettingsError:
        try:
            return self.settings.with_marker(kwargs, f"@pytest.mark.concurrent on {item.nodeid}")
        except SettingsError as error:
            return error

    def check_leaks(self, item: pytest.Item) -> None:
        """After the teardown: what the test left running, as a warning or a failure."""
        before = item.stash.get(LEAK_SNAPSHOT_KEY, None)
        if before is None:
            return
        from pytest_concurrency.engine.leaks import find_leaks

        found = find_leaks(before, ignore=self.abandoned_idents)
        if not found:
            return
        self.leaked.append(found.describe(item.nodeid))
        if self.settings.leaks == "fail":
            pytest.fail(found.describe(item.nodeid), pytrace=False)
        item.warn(ConcurrencyLeakWarning(found.describe(item.nodeid)))

    # -- the call: run the body concurrently ------------------------------------------------

    # -- the fixture --------------------------------------------------------------------------

    # -- reports ------------------------------------------------------------------------------

    # -- summary and files --------------------------------------------------------------------


class CodeUnderTestHooks:
    """While a test runs, from setup to teardown (in an isolated child too), "is this the
    user's code?" is answered by its code under test (:func:`.owncode.judged_by`)."""

    def __init__(self, session: ConcurrencySession) -> None:
        self.session = session

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        from pytest_concurrency.engine import owncode

        with owncode.judged_by(self.session.code_filter(item)):
            return (yield)


class ItemHooks:
    """The per-test hooks, registered by :meth:`ConcurrencySession.activate` only once
    collection found a test that needs them; the work is the session's."""

    def __init__(self, session: ConcurrencySession) -> None:
        self.session = session

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
        if not self.session.isolated(item):
            return None
        from pytest_concurrency.plugin.isolation import run_isolated

        run_isolated(self.session, item, nextitem)
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.session.setup_item(item)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        yield
        self.session.check_leaks(item)

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        __tracebackhide__ = True
        return calls.call_item(self.session, pyfuncitem)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        if call.when == "call":
            harness_entries.before_call_report(self.session, item, call)
            self.session.running = None  # its entries go with this report
        rep = yield
        if call.when == "call" or rep.failed or (call.when == "setup" and rep.skipped):
            entries = take_entries(item)
            if entries:
                setattr(rep, REPORT_ATTRIBUTE, entries)
        return rep

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        harness_entries.collect_entries(self.session, report)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        try:
            result = yield
        except (KeyboardInterrupt, pytest.exit.Exception) as interrupt:
            harness_entries.record_harness_interrupt(self.session, item, interrupt)
            raise
        except BaseException:
            self.session.gil.after_call(item, passed=False)
            raise
        self.session.gil.after_call(item, passed=True)  # under --concurrency-gil=fail, may fail
        return result

    def pytest_keyboard_interrupt(self) -> None:
        harness_entries.collect_interrupted(self.session)


class ShardHooks:
    """``--concurrency-shards=K`` with K >= 2 acts at collection: registered at configure,
    only then."""

    def __init__(self, session: ConcurrencySession) -> None:
        self.session = session

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        self.session.generate_shards(metafunc)


class ConcurrencyLeakWarning(pytest.PytestWarning):
    """A concurrent test left a thread or a process running."""
