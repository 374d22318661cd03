"""The hooks: collection, the call wrapper, reports and the summary.

:class:`ConcurrencySession` is registered for every pytest session; its hooks run once per
session or once per report. The per-test hooks (:class:`ItemHooks`, and the lock watch of
:mod:`pytest_concurrency.plugin.lockwatch`) are registered only when collection finds a test that
needs them (see :func:`needs_item_hooks`), and the machinery they drive (harness, runners,
perturbation, leak snapshots) is imported only then: a suite that never uses the plugin pays
for one pass over its collected items and nothing per test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import os
import sys
from collections.abc import Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine import cores
from pytest_concurrency.engine.settings import DEFAULT_SCHEDULE_DEPTH, DEFAULT_TIMEOUT, Settings
from pytest_concurrency.errors import LoopBlocked, SettingsError
from pytest_concurrency.plugin.entries import (
    ENTRIES_KEY,
    REPORT_ATTRIBUTE,
    record_entry,
    take_entries,
)

if TYPE_CHECKING:  # imported where used: an unmarked suite never loads them
    from _pytest.nodes import Node

    from pytest_concurrency.driver.harness import Concurrency, HarnessConfig, HarnessLoop
    from pytest_concurrency.driver.progress import LiveProgress
    from pytest_concurrency.engine.leaks import Snapshot
    from pytest_concurrency.engine.outcomes import SeriesOutcome
    from pytest_concurrency.runners.base import Runner, RunPlan

SETTINGS_KEY = pytest.StashKey[Settings]()
SHARD_ARG = "concurrency_shard"
LEAK_SNAPSHOT_KEY: pytest.StashKey[Snapshot] = pytest.StashKey()
ITEM_HOOKS_NAME = "concurrency-item-hooks"
ITEM_FIXTURES = ("concurrency", "scaling")
ITEM_MARKERS = frozenset({"concurrent", "scaling"})
PYTEST_TIMEOUT_SHARE = 0.8
SERIAL_KEY = pytest.StashKey[str]()
WARNING_NAMES = ("warns", "catch_warnings", "deprecated_call")
SECTION_TITLE = "concurrency"


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
    ) -> None:
        self.config = config
        self.settings = settings
        self.session_seed = session_seed
        self.run_all = run_all
        self.unsafe_fixtures = frozenset(unsafe_fixtures)
        self.json_path = json_path
        self.plot_dir = plot_dir
        self.entries: list[dict[str, Any]] = []
        self.abandoned_threads: list[str] = []
        self.abandoned_idents: frozenset[int] = frozenset()
        self.leaked: list[str] = []
        self.plot_lines: list[str] = []
        self.item_hooks: ItemHooks | None = None
        self.running: pytest.Item | None = None  # a test from its setup to its call's report

    @functools.cached_property
    def budget(self) -> cores.CoreBudget:
        """The usable cores (affinity and cgroup quota), read when first needed."""
        return cores.core_budget()

    def activate(self) -> None:
        """Register the per-test hooks (once): collection found a test that needs them."""
        if self.item_hooks is not None:
            return
        from pytest_concurrency.plugin.lockwatch import (  # lock tracking, deadlocks (issue 5)
            LOCKWATCH_NAME,
            LockWatch,
        )

        self.item_hooks = ItemHooks(self)
        manager = self.config.pluginmanager
        manager.register(self.item_hooks, ITEM_HOOKS_NAME)
        manager.register(LockWatch(self), LOCKWATCH_NAME)

    # -- header -----------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        s = self.settings
        workers = "auto" if s.workers is None else str(s.workers)
        runs = f"{s.budget:g}s budget" if s.budget is not None else f"{s.runs} runs"
        return [
            f"concurrency: seed {self.session_seed} (replay: --concurrency-seed="
            f"{self.session_seed}); defaults: {s.mode}, {workers} workers, {runs}, "
            f"perturbation {'on' if s.perturb else 'off'}"
            + ("; --concurrency-all" if self.run_all else ""),
            f"concurrency: cores {self.budget.describe()}; {cores.describe_interpreter()}",
            f"concurrency: {describe_start_method(s.start_method)}",
            *self.oversubscription_lines(),
            *schedule_header_lines(s),
        ]

    def oversubscription(self) -> dict[str, Any] | None:
        """xdist workers times our workers against the usable cores, under pytest-xdist."""
        processes = xdist_worker_count(self.config)
        if not processes:
            return None
        workers = self.settings.worker_count(self.budget.usable)
        busy = processes * workers
        return {
            "xdist_workers": processes,
            "workers_per_test": workers,
            "usable_cores": self.budget.usable,
            "ratio": round(busy / self.budget.usable, 2),
        }

    def oversubscription_lines(self) -> list[str]:
        over = self.oversubscription()
        if over is None:
            return []
        return [
            messages.OVERSUBSCRIBED.format(
                **over, busy=over["xdist_workers"] * over["workers_per_test"]
            )
        ]

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
        definition = metafunc.definition
        if definition.get_closest_marker("not_concurrent") is not None:
            return False
        if definition.get_closest_marker("concurrent") is not None:
            return True
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
        for item in items:
            reason = self.serial_reason(item)
            if reason is not None:
                item.stash[SERIAL_KEY] = reason
            elif item.get_closest_marker("concurrent") is None:
                item.add_marker(pytest.mark.concurrent())

    def serial_reason(self, item: pytest.Item) -> str | None:
        """Why ``--concurrency-all`` runs this test once, normally; None to run it concurrently."""
        marker = item.get_closest_marker("not_concurrent")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else None)
            return messages.SERIAL_NOT_CONCURRENT + (f": {reason}" if reason else "")
        if not isinstance(item, pytest.Function):
            return messages.SERIAL_NOT_FUNCTION
        if item.get_closest_marker("concurrent") is not None:
            return None
        unsafe = sorted(self.unsafe_fixtures.intersection(item.fixturenames))
        if unsafe:
            return messages.SERIAL_UNSAFE_FIXTURE.format(names=", ".join(unsafe))
        code = getattr(item.obj, "__code__", None)
        names = set(code.co_names) if code is not None else set()
        for name in WARNING_NAMES:
            if name in names:
                return messages.SERIAL_WARNINGS.format(name=name)
        return None

    # -- setup: settle the test's settings, or fail it with a clear word ------------------

    def setup_item(self, item: pytest.Item) -> None:
        self.running = item
        if self.settings.leaks != "off" and is_concurrent(item):
            from pytest_concurrency.engine.leaks import take_snapshot

            item.stash[LEAK_SNAPSHOT_KEY] = take_snapshot()
        marker = item.get_closest_marker("concurrent")
        reason = item.stash.get(SERIAL_KEY, None)
        if reason is not None:
            from pytest_concurrency.engine.report import serial_entry

            record_entry(item, serial_entry(item.nodeid, reason))
            return
        if marker is None:
            return
        if not isinstance(item, pytest.Function):
            pytest.fail(messages.NOT_A_FUNCTION.format(nodeid=item.nodeid), pytrace=False)
        if marker.args:
            pytest.fail(
                messages.POSITIONAL_MARKER_ARGS.format(args=marker.args, nodeid=item.nodeid),
                pytrace=False,
            )
        settings_or_error = self.marker_settings(item, marker.kwargs)
        if isinstance(settings_or_error, SettingsError):
            pytest.fail(str(settings_or_error), pytrace=False)
        settings = settings_or_error
        if is_async_test(item) and "mode" not in marker.kwargs:
            settings = dataclasses.replace(settings, mode="asyncio")
        if is_async_test(item) != (settings.mode == "asyncio"):
            template = (
                messages.SYNC_BODY_IN_ASYNCIO
                if settings.mode == "asyncio"
                else messages.ASYNC_BODY_IN_OTHER_MODE
            )
            pytest.fail(template.format(nodeid=item.nodeid, mode=settings.mode), pytrace=False)
        item.stash[SETTINGS_KEY] = settings

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

    def call_item(self, pyfuncitem: pytest.Function) -> bool | None:
        __tracebackhide__ = True
        settings = pyfuncitem.stash.get(SETTINGS_KEY, None)
        if settings is None:
            if "concurrency" in pyfuncitem.funcargs and is_async_test(pyfuncitem):
                return self.run_async_harness(pyfuncitem)
            if pyfuncitem.get_closest_marker("scaling") is None:
                return None
            return run_scaling(pyfuncitem)
        from pytest_concurrency.driver.harness import Concurrency
        from pytest_concurrency.driver.series import run_series
        from pytest_concurrency.engine.outcomes import SeriesOutcome
        from pytest_concurrency.runners.base import RunPlan

        fixture = pyfuncitem.funcargs.get("concurrency")
        config = self.harness_config(pyfuncitem, settings)
        if isinstance(fixture, Concurrency):
            fixture._config = config
        argnames = pyfuncitem._fixtureinfo.argnames
        call = functools.partial(
            test_function(pyfuncitem), **{n: pyfuncitem.funcargs[n] for n in argnames}
        )
        plan = RunPlan(
            count=None if settings.budget is not None else config.runs,
            deadline=None if settings.budget is None else _deadline(settings.budget),
        )
        outcome = SeriesOutcome(
            mode=settings.mode,
            workers=config.workers,
            runs_planned=plan.count,
            seed=config.seed,
            budget=settings.budget,
        )
        runner = self.make_runner(pyfuncitem, settings, config.workers, config.seed)
        progress = self.live_progress(pyfuncitem, outcome, plan)
        try:
            run_series(
                runner,
                [call] * config.workers,
                outcome=outcome,
                plan=plan,
                timeout=config.timeout,
                on_record=progress.update if progress is not None else None,
            )
        except BaseException:
            if outcome.interrupt is not None:  # pytest-timeout, Ctrl-C: the runs so far count
                self.record_outcome(pyfuncitem, outcome, config)
            raise
        finally:
            self.close_runner(runner)
            if progress is not None:
                progress.finish()
        self.finish_outcome(pyfuncitem, outcome, config)
        return True

    def live_progress(
        self, item: pytest.Item, outcome: SeriesOutcome, plan: RunPlan
    ) -> LiveProgress | None:
        """Progress on the terminal for long series; None when not on a terminal."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or not reporter.isatty() or is_xdist_worker(self.config):
            return None
        if self.config.get_verbosity() < 0:
            return None
        from pytest_concurrency.driver.progress import LiveProgress

        capture = self.config.pluginmanager.get_plugin("capturemanager")

        def write(line: str, first: bool, last: bool) -> None:
            with capture.global_and_fixture_disabled() if capture else _nothing():
                if first:
                    reporter.write("\n")
                reporter.rewrite(line, erase=True)
                if last:
                    reporter.write("\n")
                reporter.flush()

        return LiveProgress(write, label=item.name, outcome=outcome, deadline=plan.deadline)

    def record_outcome(
        self, item: pytest.Function, outcome: SeriesOutcome, config: HarnessConfig
    ) -> None:
        """The test's entry for the summary and the JSON report."""
        from pytest_concurrency.engine import report

        reproduce = config.reproduce if outcome.failed else None
        record_entry(
            item,
            report.concurrent_entry(
                outcome, nodeid=item.nodeid, reproduce=reproduce, shard=config.shard
            ),
        )

    def finish_outcome(
        self, item: pytest.Function, outcome: SeriesOutcome, config: HarnessConfig
    ) -> None:
        __tracebackhide__ = True
        from pytest_concurrency.driver.series import failure_exception, outcome_signal

        self.record_outcome(item, outcome, config)
        record = outcome.failing_run
        if outcome.interrupt is not None and not outcome.failed:
            raise outcome.interrupt
        if outcome.failed:
            raise failure_exception(
                outcome,
                timeout=config.timeout,
                reproduce=config.reproduce,
                seed=config.reproduce_seed,
            )
        if record is None and outcome.runs_done and outcome.signals:
            signal = outcome_signal(outcome)
            if signal is not None:
                raise signal

    def harness_config(self, item: pytest.Item, settings: Settings) -> HarnessConfig:
        from pytest_concurrency.driver.harness import HarnessConfig
        from pytest_concurrency.engine import report
        from pytest_concurrency.engine.seeds import derive_seed, test_seed

        seed = (
            settings.seed
            if settings.seed is not None
            else test_seed(self.session_seed, item.nodeid)
        )
        reproduce_seed = settings.seed if settings.seed is not None else self.session_seed
        shard = shard_of(item)
        runs = settings.runs
        extra: tuple[str, ...] = ()
        if shard is not None:
            index, count = shard
            seed = derive_seed("shard", seed, index)
            runs = max(1, math.ceil(settings.runs / count))
            extra = (f"--concurrency-shards={count}",)
        extra += schedule_options(settings)
        return HarnessConfig(
            mode=settings.mode,
            workers=settings.worker_count(self.budget.usable),
            runs=runs,
            seed=seed,
            timeout=settings.timeout or run_timeout(item),
            budget=settings.budget,
            reproduce=report.reproduce_command(invocation_nodeid(item), reproduce_seed, extra),
            reproduce_seed=reproduce_seed,
            shard=shard,
        )

    def make_runner(self, item: pytest.Item, settings: Settings, workers: int, seed: int) -> Runner:
        from pytest_concurrency.runners import make_perturbation, make_runner

        roots = [self.config.rootpath, item.path.parent]
        if settings.mode == "threads" and settings.schedule != "off":
            from pytest_concurrency.races.scheduler import (
                make_scheduler,  # the controlled scheduler (issue 5)
            )

            perturbation: Any = make_scheduler(
                settings.schedule,
                roots=roots,
                seed=seed,
                workers=workers,
                depth=settings.schedule_depth,
            )
        else:
            perturbation = make_perturbation(enabled=settings.perturb, roots=roots, seed=seed)
        return make_runner(
            settings.mode, workers, perturbation=perturbation, options=runner_options(settings)
        )

    def run_async_harness(self, item: pytest.Function) -> bool:
        """An unmarked ``async def`` test that requests ``concurrency``: run its body once on
        the plugin's event loop (the harness runs its tasks there). pytest-asyncio, if it
        wrapped the function, never gets to call it: no double run, no unawaited coroutine."""
        __tracebackhide__ = True
        from pytest_concurrency.driver.harness import Concurrency
        from pytest_concurrency.driver.series import failure_exception
        from pytest_concurrency.runners import aio

        fixture = item.funcargs["concurrency"]
        body = functools.partial(
            test_function(item), **{n: item.funcargs[n] for n in item._fixtureinfo.argnames}
        )
        try:
            aio.run_test_coroutine(body)
        except LoopBlocked as blocked:
            self.abandoned_threads.append(blocked.thread.name)
            self.abandoned_idents |= {blocked.thread.ident or 0}
            loop = fixture.active if isinstance(fixture, Concurrency) else None
            if loop is None or not loop.outcome.failed:
                raise
            config = loop.fixture.config
            raise failure_exception(
                loop.outcome,
                timeout=config.timeout,
                reproduce=config.reproduce,
                seed=config.reproduce_seed,
            ) from None
        return True

    def close_runner(self, runner: Runner) -> None:
        runner.close()
        abandoned = getattr(runner, "abandoned_threads", [])
        self.abandoned_threads.extend(thread.name for thread in abandoned)
        self.abandoned_idents |= {t.ident for t in abandoned if t.ident is not None}

    # -- the fixture --------------------------------------------------------------------------

    def concurrency_fixture(self, request: pytest.FixtureRequest) -> Concurrency:
        from pytest_concurrency.driver.harness import Concurrency

        item = request.node
        settings = item.stash.get(SETTINGS_KEY, None) or self.settings
        if is_async_test(item):
            settings = dataclasses.replace(settings, mode="asyncio")
        config = self.harness_config(item, settings)

        def factory(mode: str, workers: int, schedule: str | None = None) -> Runner:
            chosen = dataclasses.replace(
                settings, mode=mode, schedule=schedule or settings.schedule
            )
            return self.make_runner(item, chosen, workers, config.seed)

        return Concurrency(config, factory)

    # -- reports ------------------------------------------------------------------------------

    def before_call_report(self, item: pytest.Item, call: pytest.CallInfo[None]) -> None:
        """The call phase is over: the harness's entry, and the entries' junit properties."""
        self.record_harness(item, call)
        entries = item.stash.get(ENTRIES_KEY, [])
        if entries:
            from pytest_concurrency.engine.report import junit_properties

            for entry in entries:  # --junitxml <property> elements
                item.user_properties.extend(junit_properties(entry))

    def record_harness(self, item: pytest.Item, call: pytest.CallInfo[None]) -> None:
        """The entry of a test that used ``concurrency.runs()``; if a check between runs
        failed, say which run and how to replay it."""
        harness = harness_of(item)
        if harness is None:
            return
        from pytest_concurrency.engine.outcomes import add_note, is_outside_interrupt

        fixture, loop = harness
        error = call.excinfo.value if call.excinfo is not None else None
        if error is not None and is_outside_interrupt(error):  # not a check: it was cut short
            record_entry(item, harness_entry(item, fixture, loop, interrupt=error))
            return
        entry = harness_entry(item, fixture, loop)
        run = loop.current
        if error is not None and run is not None and not loop.outcome.failed:
            add_note(error, "\n".join(check_failed_lines(loop, run.index, fixture.config)))
            entry.update(failing_run=run.index, reproduce=fixture.config.reproduce)
        record_entry(item, entry)

    def collect_entries(self, report: pytest.TestReport) -> None:
        """The entries a report carries (from this process or an xdist worker), with the
        test's outcome, for the summary and the JSON report."""
        entries = getattr(report, REPORT_ATTRIBUTE, None)
        if not entries:
            return
        word = outcome_word(report)
        for entry in entries:
            self.entries.append({**entry, "outcome": word})

    def record_harness_interrupt(self, item: pytest.Item, interrupt: BaseException) -> None:
        """Ctrl-C or pytest.exit() in a harness test: no report follows, so its entry is made
        here, while the fixture is still there."""
        harness = harness_of(item)
        if harness is not None:
            record_entry(item, harness_entry(item, *harness, interrupt=interrupt))

    def collect_interrupted(self) -> None:
        """Ctrl-C: the running test gets no report; its entry (the runs it made, what cut them
        short) still goes to the summary and the JSON report."""
        item, self.running = self.running, None
        if item is not None:
            for entry in take_entries(item):
                self.entries.append({**entry, "outcome": OUTCOME_INTERRUPTED})

    # -- summary and files --------------------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        lines: list[str] = []
        if self.entries:
            from pytest_concurrency.engine.report import summary_lines

            lines = summary_lines(self.entries)
        scaling_entries = self.scaling_entries()
        if scaling_entries:
            from pytest_concurrency.scaling.api import format_scaling_table

            lines.extend(format_scaling_table(scaling_entries))
        lines.extend(self.plot_lines)
        if self.abandoned_threads:
            lines.append(f"abandoned hung threads: {', '.join(self.abandoned_threads)}")
        lines.extend(f"leak: {text}" for text in self.leaked)
        if lines and not is_xdist_worker(self.config):
            lines.extend(
                line.removeprefix("concurrency: ") for line in self.oversubscription_lines()
            )
        if self.json_path is not None and not is_xdist_worker(self.config):
            lines.append(f"JSON report: {self.json_path}")
        if not lines:
            return
        terminalreporter.write_sep("=", SECTION_TITLE)
        for line in lines:
            terminalreporter.write_line(line)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if is_xdist_worker(self.config):
            return
        cache = getattr(self.config, "cache", None)
        if cache is not None:
            cache.set(CACHE_SEED_KEY, self.session_seed)
        if self.json_path is not None:
            from pytest_concurrency.engine import report

            report.write_json(
                self.json_path, report.json_document(self.json_header(), self.entries)
            )
        if self.plot_dir is not None:
            self.plot_lines = self.write_plots(self.plot_dir)

    def scaling_entries(self) -> list[dict[str, Any]]:
        if not self.entries:
            return []
        from pytest_concurrency.engine.report import KIND_SCALING

        return [entry for entry in self.entries if entry.get("kind") == KIND_SCALING]

    def write_plots(self, directory: Path) -> list[str]:
        entries = self.scaling_entries()
        if not entries:
            return []
        from pytest_concurrency.errors import PlotUnavailableError
        from pytest_concurrency.scaling.plot import write_charts

        try:
            written = write_charts(entries, directory)
        except (PlotUnavailableError, OSError) as error:
            return [messages.PLOT_FAILED.format(error=error)]
        return [
            messages.PLOT_WRITTEN.format(
                count=len(written), directory=directory, index=directory / "index.html"
            )
        ]

    def json_header(self) -> dict[str, Any]:
        return {
            "seed": self.session_seed,
            "python": sys.version.split()[0],
            "implementation": sys.implementation.name,
            "gil_enabled": cores.gil_enabled(),
            "free_threaded_build": cores.free_threaded_build(),
            "usable_cores": self.budget.usable,
            "cpu_count": self.budget.cpu_count,
            "pid": os.getpid(),
            "oversubscription": self.oversubscription(),
        }


CACHE_SEED_KEY = "concurrency/seed"


class ItemHooks:
    """The per-test hooks, registered by :meth:`ConcurrencySession.activate` only once
    collection found a test that needs them; the work is the session's."""

    def __init__(self, session: ConcurrencySession) -> None:
        self.session = session

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
        return self.session.call_item(pyfuncitem)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        if call.when == "call":
            self.session.before_call_report(item, call)
            self.session.running = None  # its entries go with this report
        rep = yield
        if call.when == "call" or rep.failed:
            entries = take_entries(item)
            if entries:
                setattr(rep, REPORT_ATTRIBUTE, entries)
        return rep

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.session.collect_entries(report)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        try:
            return (yield)
        except (KeyboardInterrupt, pytest.exit.Exception) as interrupt:
            self.session.record_harness_interrupt(item, interrupt)
            raise

    def pytest_keyboard_interrupt(self) -> None:
        self.session.collect_interrupted()


class ShardHooks:
    """``--concurrency-shards=K`` with K >= 2 acts at collection: registered at configure,
    only then."""

    def __init__(self, session: ConcurrencySession) -> None:
        self.session = session

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        self.session.generate_shards(metafunc)


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


def schedule_header_lines(settings: Settings) -> list[str]:
    """The controlled scheduler and lock-order settings, when they are not the defaults."""
    if settings.schedule == "off" and settings.lock_order == "fail":
        return []  # the defaults: nothing to say
    schedule = settings.schedule
    if schedule == "pct":
        schedule += f" (depth {settings.schedule_depth})"
    return [messages.HEADER_SCHEDULE.format(schedule=schedule, lock_order=settings.lock_order)]


class ConcurrencyLeakWarning(pytest.PytestWarning):
    """A concurrent test left a thread or a process running."""


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def is_concurrent(item: pytest.Item) -> bool:
    return item.get_closest_marker("concurrent") is not None or "concurrency" in getattr(
        item, "fixturenames", ()
    )


def pytest_timeout_seconds(item: pytest.Item) -> float | None:
    """The timeout pytest-timeout will enforce on this test, if that plugin is active."""
    if not item.config.pluginmanager.hasplugin("timeout"):
        return None
    marker = item.get_closest_marker("timeout")
    raw: object = None
    if marker is not None:
        raw = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
    if raw is None:
        raw = item.config.getoption("timeout", None)
    if raw is None:
        try:
            raw = item.config.getini("timeout")
        except ValueError:
            raw = None
    try:
        seconds = float(raw) if raw not in (None, "") else 0.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


def run_timeout(item: pytest.Item) -> float:
    """The per-run deadline when none is given: ours, or less than pytest-timeout's, so that
    a hung run is reported with every worker's stack before pytest-timeout ends the test."""
    outer = pytest_timeout_seconds(item)
    if outer is None:
        return DEFAULT_TIMEOUT
    return min(DEFAULT_TIMEOUT, outer * PYTEST_TIMEOUT_SHARE)


def _deadline(budget: float) -> float:
    import time

    return time.monotonic() + budget


def check_failed_lines(loop: HarnessLoop, run: int, config: HarnessConfig) -> list[str]:
    from pytest_concurrency.engine import report

    outcome = loop.outcome
    return [
        f"FAILED after run {run} {report.run_position(outcome, run)} "
        f"({report.where(outcome, config.reproduce_seed)}): the check after the run failed",
        *report.observation_lines(outcome),
        "  " + report.REPRODUCE.format(command=config.reproduce),
    ]


def shard_of(item: pytest.Item) -> tuple[int, int] | None:
    """(shard index, shard count) of an item made by ``--concurrency-shards``, else None."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or SHARD_ARG not in callspec.params:
        return None
    session = item.config.pluginmanager.get_plugin("concurrency-session")
    count = session.settings.shards if isinstance(session, ConcurrencySession) else 1
    return int(callspec.params[SHARD_ARG]), count


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


def schedule_options(settings: Settings) -> tuple[str, ...]:
    """What the reproduce line needs to replay a controlled schedule chosen on the command line
    (harmless when the marker chose it: the marker wins)."""
    if settings.schedule == "off" or settings.mode != "threads":
        return ()
    options: tuple[str, ...] = (f"--concurrency-schedule={settings.schedule}",)
    if settings.schedule == "pct" and settings.schedule_depth != DEFAULT_SCHEDULE_DEPTH:
        options += (f"--concurrency-schedule-depth={settings.schedule_depth}",)
    return options


def runner_options(settings: Settings) -> dict[str, Any]:
    """Mode-specific knobs for :func:`~pytest_concurrency.runners.make_runner`."""
    if settings.mode == "processes":
        return {"start_method": settings.start_method}
    return {}


def describe_start_method(start_method: str | None) -> str:
    from pytest_concurrency.runners.processes import describe_start_method as describe

    return describe(start_method)


def run_scaling(item: pytest.Function) -> bool:
    """A test marked ``scaling``: its body is the unit of work. (This frame stays visible:
    when every frame is hidden, pytest adds a line about hidden entries to the report.)"""
    from pytest_concurrency.plugin.scaling_hooks import run_scaling_marker

    run_scaling_marker(item)
    return True


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


def harness_of(item: pytest.Item) -> tuple[Concurrency, HarnessLoop] | None:
    """The ``concurrency`` fixture of a test that ran ``concurrency.runs()`` (not a marked
    test, whose entry the marker's series makes), with its loop."""
    from pytest_concurrency.driver.harness import Concurrency

    fixture = getattr(item, "funcargs", {}).get("concurrency")
    if not isinstance(fixture, Concurrency) or item.stash.get(SETTINGS_KEY, None):
        return None
    loop = fixture.active
    return None if loop is None else (fixture, loop)


def harness_entry(
    item: pytest.Item,
    fixture: Concurrency,
    loop: HarnessLoop,
    *,
    interrupt: BaseException | None = None,
) -> dict[str, Any]:
    """The entry of a harness test; ``interrupt``: what cut it short outside a series."""
    from pytest_concurrency.engine import report

    outcome = loop.outcome
    if interrupt is not None and outcome.interrupt is None:
        outcome.interrupt = interrupt
    return report.concurrent_entry(
        outcome,
        nodeid=item.nodeid,
        reproduce=fixture.config.reproduce if outcome.failed else None,
        shard=fixture.config.shard,
    )


def outcome_word(rep: pytest.TestReport) -> str:
    if hasattr(rep, "wasxfail"):
        return "xfailed" if rep.skipped else "xpassed"
    return rep.outcome
