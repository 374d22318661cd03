"""The hooks: collection, the call wrapper, reports and the summary, on one session object."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import sys
from collections.abc import Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from . import cores, leaks, messages, report
from .entries import REPORT_ATTRIBUTE, record_entry, take_entries
from .harness import Concurrency, HarnessConfig, HarnessLoop
from .outcomes import SeriesOutcome
from .progress import LiveProgress
from .runners import make_perturbation, make_runner
from .runners.base import Runner, RunPlan
from .seeds import test_seed
from .series import add_note, failure_exception, outcome_signal, run_series
from .settings import DEFAULT_TIMEOUT, Settings, SettingsError

SETTINGS_KEY = pytest.StashKey[Settings]()
LEAK_SNAPSHOT_KEY = pytest.StashKey[leaks.Snapshot]()
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
        self.budget = cores.core_budget()
        self.entries: list[dict[str, Any]] = []
        self.abandoned_threads: list[str] = []
        self.abandoned_idents: frozenset[int] = frozenset()
        self.leaked: list[str] = []

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
        ]

    # -- collection -------------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if not self.run_all:
            return
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

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if self.settings.leaks != "off" and is_concurrent(item):
            item.stash[LEAK_SNAPSHOT_KEY] = leaks.take_snapshot()
        marker = item.get_closest_marker("concurrent")
        reason = item.stash.get(SERIAL_KEY, None)
        if reason is not None:
            record_entry(item, report.serial_entry(item.nodeid, reason))
            return
        if marker is None:
            return
        if not isinstance(item, pytest.Function):
            pytest.fail(messages.NOT_A_FUNCTION.format(nodeid=item.nodeid), pytrace=False)
        if marker.args:
            pytest.fail(messages.POSITIONAL_MARKER_ARGS.format(args=marker.args,
                                                              nodeid=item.nodeid),
                        pytrace=False)
        settings_or_error = self.marker_settings(item, marker.kwargs)
        if isinstance(settings_or_error, SettingsError):
            pytest.fail(str(settings_or_error), pytrace=False)
        settings = settings_or_error
        if inspect.iscoroutinefunction(item.obj) and "mode" not in marker.kwargs:
            settings = dataclasses.replace(settings, mode="asyncio")
        item.stash[SETTINGS_KEY] = settings

    def marker_settings(self, item: pytest.Item,
                        kwargs: Mapping[str, Any]) -> Settings | SettingsError:
        try:
            return self.settings.with_marker(kwargs, f"@pytest.mark.concurrent on {item.nodeid}")
        except SettingsError as error:
            return error

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        yield
        before = item.stash.get(LEAK_SNAPSHOT_KEY, None)
        if before is None:
            return
        found = leaks.find_leaks(before, ignore=self.abandoned_idents)
        if not found:
            return
        self.leaked.append(found.describe(item.nodeid))
        if self.settings.leaks == "fail":
            pytest.fail(found.describe(item.nodeid), pytrace=False)
        item.warn(ConcurrencyLeakWarning(found.describe(item.nodeid)))

    # -- the call: run the body concurrently ------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        __tracebackhide__ = True
        settings = pyfuncitem.stash.get(SETTINGS_KEY, None)
        if settings is None:
            return None
        fixture = pyfuncitem.funcargs.get("concurrency")
        config = self.harness_config(pyfuncitem, settings)
        if isinstance(fixture, Concurrency):
            fixture._config = config
        argnames = pyfuncitem._fixtureinfo.argnames
        call = functools.partial(pyfuncitem.obj, **{n: pyfuncitem.funcargs[n] for n in argnames})
        plan = RunPlan(
            count=None if settings.budget is not None else settings.runs,
            deadline=None if settings.budget is None else _deadline(settings.budget),
        )
        outcome = SeriesOutcome(mode=settings.mode, workers=config.workers,
                                runs_planned=plan.count, seed=config.seed, budget=settings.budget)
        runner = self.make_runner(pyfuncitem, settings, config.workers, config.seed)
        progress = self.live_progress(pyfuncitem, outcome, plan)
        try:
            run_series(runner, [call] * config.workers, outcome=outcome, plan=plan,
                       timeout=config.timeout,
                       on_record=progress.update if progress is not None else None)
        finally:
            self.close_runner(runner)
            if progress is not None:
                progress.finish()
        self.finish_outcome(pyfuncitem, outcome, config)
        return True

    def live_progress(self, item: pytest.Item, outcome: SeriesOutcome,
                      plan: RunPlan) -> LiveProgress | None:
        """Progress on the terminal for long series; None when not on a terminal."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or not reporter.isatty() or is_xdist_worker(self.config):
            return None
        if self.config.get_verbosity() < 0:
            return None
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

    def finish_outcome(self, item: pytest.Function, outcome: SeriesOutcome,
                       config: HarnessConfig) -> None:
        __tracebackhide__ = True
        reproduce = config.reproduce if outcome.failed else None
        record_entry(item, report.concurrent_entry(outcome, nodeid=item.nodeid,
                                                   reproduce=reproduce))
        item.user_properties.extend(junit_properties(outcome))
        record = outcome.failing_run
        if outcome.interrupt is not None and not outcome.failed:
            raise outcome.interrupt
        if outcome.failed:
            raise failure_exception(outcome, timeout=config.timeout, reproduce=config.reproduce,
                                    seed=config.reproduce_seed)
        if record is None and outcome.runs_done and outcome.signals:
            signal = outcome_signal(outcome)
            if signal is not None:
                raise signal

    def harness_config(self, item: pytest.Item, settings: Settings) -> HarnessConfig:
        seed = settings.seed if settings.seed is not None else test_seed(self.session_seed,
                                                                          item.nodeid)
        reproduce_seed = settings.seed if settings.seed is not None else self.session_seed
        return HarnessConfig(
            mode=settings.mode,
            workers=settings.worker_count(self.budget.usable),
            runs=settings.runs,
            seed=seed,
            timeout=settings.timeout or run_timeout(item),
            budget=settings.budget,
            reproduce=report.reproduce_command(invocation_nodeid(item), reproduce_seed),
            reproduce_seed=reproduce_seed,
        )

    def make_runner(self, item: pytest.Item, settings: Settings, workers: int,
                    seed: int) -> Runner:
        roots = [self.config.rootpath, item.path.parent]
        perturbation = make_perturbation(enabled=settings.perturb, roots=roots, seed=seed)
        return make_runner(settings.mode, workers, perturbation=perturbation)

    def close_runner(self, runner: Runner) -> None:
        runner.close()
        abandoned = getattr(runner, "abandoned_threads", [])
        self.abandoned_threads.extend(thread.name for thread in abandoned)
        self.abandoned_idents |= {t.ident for t in abandoned if t.ident is not None}

    # -- the fixture --------------------------------------------------------------------------

    def concurrency_fixture(self, request: pytest.FixtureRequest) -> Concurrency:
        item = request.node
        settings = item.stash.get(SETTINGS_KEY, None) or self.settings
        config = self.harness_config(item, settings)

        def factory(mode: str, workers: int) -> Runner:
            return self.make_runner(item, settings, workers, config.seed)

        return Concurrency(config, factory)

    # -- reports ------------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        if call.when == "call":
            self.record_harness(item, call)
        rep = yield
        if call.when == "call" or rep.failed:
            entries = take_entries(item)
            if entries:
                setattr(rep, REPORT_ATTRIBUTE, entries)
        return rep

    def record_harness(self, item: pytest.Item, call: pytest.CallInfo[None]) -> None:
        """The entry of a test that used ``concurrency.runs()``; if a check between runs
        failed, say which run and how to replay it."""
        fixture = getattr(item, "funcargs", {}).get("concurrency")
        if not isinstance(fixture, Concurrency) or item.stash.get(SETTINGS_KEY, None):
            return
        loop = fixture.active
        if loop is None:
            return
        outcome = loop.outcome
        entry = report.concurrent_entry(outcome, nodeid=item.nodeid,
                                        reproduce=fixture.config.reproduce
                                        if outcome.failed else None)
        run = loop.current
        if call.excinfo is not None and run is not None and not outcome.failed:
            add_note(call.excinfo.value, "\n".join(check_failed_lines(loop, run.index,
                                                                     fixture.config)))
            entry.update(failing_run=run.index, reproduce=fixture.config.reproduce)
        record_entry(item, entry)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entries = getattr(report, REPORT_ATTRIBUTE, None)
        if not entries:
            return
        word = outcome_word(report)
        for entry in entries:
            self.entries.append({**entry, "outcome": word})

    # -- summary and files --------------------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        lines = report.summary_lines(self.entries)
        if self.abandoned_threads:
            lines.append(f"abandoned hung threads: {', '.join(self.abandoned_threads)}")
        lines.extend(f"leak: {text}" for text in self.leaked)
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
            report.write_json(self.json_path, report.json_document(self.json_header(),
                                                                   self.entries))

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
        }


CACHE_SEED_KEY = "concurrency/seed"


class ConcurrencyLeakWarning(pytest.PytestWarning):
    """A concurrent test left a thread or a process running."""


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def is_concurrent(item: pytest.Item) -> bool:
    return item.get_closest_marker("concurrent") is not None or "concurrency" in getattr(
        item, "fixturenames", ())


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
    outcome = loop.outcome
    return [
        f"FAILED after run {run} {report.run_position(outcome, run)} "
        f"({report.where(outcome, config.reproduce_seed)}): the check after the run failed",
        *report.observation_lines(outcome),
        "  " + report.REPRODUCE.format(command=config.reproduce),
    ]


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


def is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def outcome_word(rep: pytest.TestReport) -> str:
    if hasattr(rep, "wasxfail"):
        return "xfailed" if rep.skipped else "xpassed"
    return rep.outcome


def junit_properties(outcome: SeriesOutcome) -> list[tuple[str, object]]:
    record = outcome.failing_run
    return [
        ("concurrency_mode", outcome.mode),
        ("concurrency_workers", outcome.workers),
        ("concurrency_runs", outcome.runs_done),
        ("concurrency_seed", outcome.seed),
        ("concurrency_failures", len(record.failures) if record else 0),
    ]
