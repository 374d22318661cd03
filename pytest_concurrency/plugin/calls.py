"""The call of a concurrent test: its settings turned into a harness config and a runner,
the marker's series, the unmarked async harness, and the ``concurrency`` fixture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.modes import COROUTINE_MODE, mode_of
from pytest_concurrency.engine.settings import Settings
from pytest_concurrency.errors import LoopBlocked
from pytest_concurrency.plugin.entries import (
    record_entry,
)
from pytest_concurrency.plugin.items import (
    AUDIT_ENTRY_KEY,
    AUDITED_KEY,
    SETTINGS_KEY,
    SHARED_LOOP_KEY,
    invocation_nodeid,
    is_async_test,
    is_xdist_worker,
    outer_deadline,
    run_timeout,
    shard_of,
    test_function,
    warning_checks,
)

if TYPE_CHECKING:  # imported where used: an unmarked suite never loads them
    from pytest_concurrency.driver.harness import Concurrency, HarnessConfig, HarnessLoop
    from pytest_concurrency.driver.progress import LiveProgress
    from pytest_concurrency.engine.memory import Remembered
    from pytest_concurrency.engine.outcomes import CallKind, SeriesOutcome
    from pytest_concurrency.plugin.audit import AllowanceClock
    from pytest_concurrency.plugin.session import ConcurrencySession
    from pytest_concurrency.runners.base import Runner, RunPlan
    from pytest_concurrency.runners.framework import FrameworkHooks


def call_item(session: ConcurrencySession, pyfuncitem: pytest.Function) -> bool | None:
    __tracebackhide__ = True
    settings = pyfuncitem.stash.get(SETTINGS_KEY, None)
    if settings is None:
        if "concurrency" in pyfuncitem.funcargs and is_async_test(pyfuncitem):
            return run_async_harness(session, pyfuncitem)
        if pyfuncitem.get_closest_marker("scaling") is None:
            return None
        return run_scaling(pyfuncitem)
    from pytest_concurrency.driver.harness import Concurrency

    fixture = pyfuncitem.funcargs.get("concurrency")
    # the fixture was made from the same settings (settled at setup, before any fixture)
    config = (
        fixture.config
        if isinstance(fixture, Concurrency)
        else harness_config(session, pyfuncitem, settings)
    )
    argnames = pyfuncitem._fixtureinfo.argnames
    call = functools.partial(
        test_function(pyfuncitem), **{n: pyfuncitem.funcargs[n] for n in argnames}
    )
    run_call(session, pyfuncitem, settings, config, call, fixture)
    return True


def call_unittest(session: ConcurrencySession, item: pytest.Function) -> None:
    """A ``unittest.TestCase`` method ``--concurrency-all`` runs concurrently: pytest calls
    this in place of the item's ``runtest``; each worker call makes its own instance and runs
    setUp, the method, tearDown and the cleanups (:mod:`~pytest_concurrency.plugin.cases`)."""
    __tracebackhide__ = True
    from pytest_concurrency.plugin.cases import case_call

    settings = item.stash[SETTINGS_KEY]
    config = harness_config(session, item, settings)
    run_call(session, item, settings, config, case_call(item), None)


def run_call(
    session: ConcurrencySession,
    pyfuncitem: pytest.Function,
    settings: Settings,
    config: HarnessConfig,
    call: Callable[[], object],
    fixture: object,
) -> None:
    """The concurrent call of a test: its remembered failing seed first, then its series (an
    audited test's plain run first), and its outcome raised as pytest shows it."""
    __tracebackhide__ = True
    from pytest_concurrency.driver.harness import Concurrency

    if config.outer is None:  # pytest-timeout with func_only: its timer starts now
        outer = outer_deadline(pyfuncitem, settings.mode, call_started=time.monotonic())
        config = config if outer is None else dataclasses.replace(config, outer=outer)
    remembered = session.remembered(pyfuncitem, settings)
    if remembered is not None:  # the failing-seed memory: an earlier failure's seed first
        first = remembered_config(pyfuncitem, config, remembered)
        with fixture.configured(first) if isinstance(fixture, Concurrency) else _nothing():
            outcome = run_marked_series(session, pyfuncitem, settings, first, call)
        if outcome.failed or outcome.interrupt is not None:
            if outcome.failing_run is not None:
                outcome.failing_run.notes.append(
                    messages.REMEMBERED_FOUND_AGAIN.format(
                        session_seed=remembered.session_seed, run=remembered.run
                    )
                )
            finish_outcome(session, pyfuncitem, outcome, first)
            return
    ledger = session.audit
    if ledger is not None and pyfuncitem.stash.get(AUDITED_KEY, False):
        from pytest_concurrency.plugin.audit import start_audit

        clock = start_audit(pyfuncitem, settings, config, call, ledger)
        config = dataclasses.replace(config, budget=None)  # the session's, spread by the clock
        try:
            outcome = run_marked_series(session, pyfuncitem, settings, config, call, clock)
        finally:
            clock.close(pyfuncitem)
        if outcome.failed and outcome.interrupt is None:
            from pytest_concurrency.plugin.audit import rerun_plainly

            rerun_plainly(pyfuncitem, call)
    else:
        outcome = run_marked_series(session, pyfuncitem, settings, config, call)
    finish_outcome(session, pyfuncitem, outcome, config)


def run_marked_series(
    session: ConcurrencySession,
    item: pytest.Function,
    settings: Settings,
    config: HarnessConfig,
    call: Callable[[], object],
    clock: AllowanceClock | None = None,
) -> SeriesOutcome:
    """The series of a marked test (or one run by ``--concurrency-all``): its runs, its live
    progress, and its outcome; an interrupt from outside is recorded, then raised. An
    audited test's ``clock`` ends its series when its allowance is spent (no planned count)."""
    __tracebackhide__ = True
    from pytest_concurrency.driver.series import run_series
    from pytest_concurrency.engine.outcomes import SeriesOutcome
    from pytest_concurrency.runners.base import RunPlan

    plan = RunPlan(
        count=None if config.budget is not None else config.runs,
        deadline=None if config.budget is None else _deadline(config.budget),
        outer=config.outer,
        more=clock.more if clock is not None else None,
    )
    outcome = SeriesOutcome(
        mode=settings.mode,
        workers=config.workers,
        runs_planned=plan.count if clock is None else None,
        seed=config.seed,
        budget=config.budget,
    )
    runner = make_runner(session, item, settings, config.workers, config.seed)
    if clock is not None:
        clock.watch(getattr(runner, "perturbation", None), outcome)
    progress = live_progress(session, item, outcome, plan)
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
            record_outcome(session, item, outcome, config)
        raise
    finally:
        close_runner(session, runner)
        if progress is not None:
            progress.finish()
    return outcome


def remembered_config(
    item: pytest.Item, config: HarnessConfig, remembered: Remembered
) -> HarnessConfig:
    """The test's config for its remembered failing seed: that series seed, up to the run
    that failed, and a reproduction line with the session seed that derives it and this
    session's settings (those the runs are made with)."""
    from pytest_concurrency.engine import report

    reproduce = report.reproduce_command(
        invocation_nodeid(item), remembered.session_seed, config.reproduce_options
    )
    return dataclasses.replace(
        config,
        seed=remembered.seed,
        runs=remembered.runs,
        budget=None,
        reproduce=reproduce,
        reproduce_seed=remembered.session_seed,
    )


def live_progress(
    session: ConcurrencySession, item: pytest.Item, outcome: SeriesOutcome, plan: RunPlan
) -> LiveProgress | None:
    """Progress on the terminal for long series; None when not on a terminal."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not reporter.isatty() or is_xdist_worker(session.config):
        return None
    if session.config.get_verbosity() < 0:
        return None
    from pytest_concurrency.driver.progress import LiveProgress

    capture = session.config.pluginmanager.get_plugin("capturemanager")

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
    session: ConcurrencySession,
    item: pytest.Function,
    outcome: SeriesOutcome,
    config: HarnessConfig,
) -> None:
    """The test's entry for the summary and the JSON report."""
    from pytest_concurrency.engine import report

    reproduce = config.reproduce if outcome.failed else None
    entry = report.concurrent_entry(
        outcome, nodeid=item.nodeid, reproduce=reproduce, shard=config.shard
    )
    audit = item.stash.get(AUDIT_ENTRY_KEY, None)
    if audit is not None:
        entry["audit"] = audit
    if outcome.failed:
        from pytest_concurrency.engine.audit import failure_class

        entry["failure_class"] = failure_class(f.exception for f in outcome.failures())
        if audit is not None and audit["plain_rerun"] == "failed":
            from pytest_concurrency.engine.audit import FAILURE_OWN

            entry["failure_class"] = FAILURE_OWN
        entry["under_test"] = places_under_test(session, item, outcome)
    record_entry(item, entry)


def places_under_test(
    session: ConcurrencySession, item: pytest.Function, outcome: SeriesOutcome
) -> list[str]:
    """Where the failing run's failures happened inside the packages under test, each once."""
    from pytest_concurrency.engine.audit import origin_under_test

    settings = item.stash.get(SETTINGS_KEY, None) or session.settings
    dirs = [package.location for package in session.packages_for(settings.packages)]
    dirs.append(str(session.config.rootpath))
    places: dict[str, None] = {}
    for failure in outcome.failures():
        place = origin_under_test(failure.exception, dirs, str(item.path))
        if place is not None:
            places.setdefault(place, None)
    return list(places)


def finish_outcome(
    session: ConcurrencySession,
    item: pytest.Function,
    outcome: SeriesOutcome,
    config: HarnessConfig,
) -> None:
    __tracebackhide__ = True
    from pytest_concurrency.driver.series import failure_exception, outcome_signal

    record_outcome(session, item, outcome, config)
    record = outcome.failing_run
    if outcome.interrupt is not None and not outcome.failed:
        raise outcome.interrupt
    if record is not None and record.failures:
        fail_fixture_lookup(item, outcome, config)
        record.notes.extend(warning_check_lines(item, config))
        record.notes.extend(failure_class_lines(session, item, outcome))
    if record is not None and outcome.failed and SHARED_LOOP_KEY in item.stash:
        from pytest_concurrency.plugin.asyncio_fixtures import shared_loop_lines

        settings = item.stash.get(SETTINGS_KEY, None) or session.settings
        record.notes.extend(shared_loop_lines(item, perturb=settings.perturb))
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


def failure_class_lines(
    session: ConcurrencySession, item: pytest.Function, outcome: SeriesOutcome
) -> list[str]:
    """A failure report's line on whose failure it is: the plugin's (an internal error), or,
    for an audited test whose plain run passed, one that shows only concurrently."""
    from pytest_concurrency.engine.audit import raised_inside_plugin

    for failure in outcome.failures():
        inside = raised_inside_plugin(failure.exception)
        if inside is not None:
            return [messages.INTERNAL_FAILURE_NOTE.format(origin=inside)]
    audit = item.stash.get(AUDIT_ENTRY_KEY, None)
    if audit is None:
        return []
    if audit["plain_rerun"] == "failed":
        return [messages.NOT_REPEATABLE_NOTE]
    lines = [messages.CONCURRENT_FAILURE_NOTE]
    places = places_under_test(session, item, outcome)
    if places:
        lines.append(messages.UNDER_TEST_NOTE.format(where=", ".join(places)))
    else:
        lines.append(messages.OUTSIDE_UNDER_TEST_NOTE)
    return lines


def warning_check_lines(item: pytest.Function, config: HarnessConfig) -> list[str]:
    """A failure report's line on the warning checks in the body (``pytest.warns``...): with
    workers in one process, they undo each other's warning filters."""
    if not mode_of(config.mode).shares_process:
        return []
    checks = warning_checks(item)
    if not checks:
        return []
    return [messages.WARNING_CHECKS_NOT_THREAD_SAFE.format(names=" / ".join(checks))]


def fail_fixture_lookup(
    item: pytest.Function, outcome: SeriesOutcome, config: HarnessConfig
) -> None:
    """Fail with the fix when a worker's ``request.getfixturevalue()`` broke inside pytest's
    fixture machinery (its own ``AssertionError``, not the user's race); every origin of the
    run is still listed below the message. (This frame stays visible: see run_scaling.)"""
    broken = fixture_lookup_failure(outcome)
    if broken is None:
        return
    from pytest_concurrency.engine.report import failure_report

    lines = failure_report(
        outcome, timeout=config.timeout, reproduce=config.reproduce, seed=config.reproduce_seed
    )
    text = messages.GETFIXTUREVALUE_IN_BODY.format(nodeid=item.nodeid, error=broken)
    pytest.fail("\n".join([text, *lines[1:]]), pytrace=False)  # not its headline: no race


def fixture_lookup_failure(outcome: SeriesOutcome) -> str | None:
    """The origin of the first failure raised by pytest's own code inside a worker's
    ``request.getfixturevalue()`` (a failure of the fixture's own code is the user's)."""
    lookup = pytest.FixtureRequest.getfixturevalue.__code__
    pytest_dir = os.path.dirname(lookup.co_filename)
    for failure in outcome.failures():
        tb = failure.exception.__traceback__ if failure.exception is not None else None
        through_lookup = False
        innermost = None
        while tb is not None:
            through_lookup = through_lookup or tb.tb_frame.f_code is lookup
            innermost, tb = tb, tb.tb_next
        if (
            through_lookup
            and innermost is not None
            and os.path.dirname(innermost.tb_frame.f_code.co_filename) == pytest_dir
        ):
            return failure.origin.describe()
    return None


def harness_config(
    session: ConcurrencySession, item: pytest.Item, settings: Settings
) -> HarnessConfig:
    from pytest_concurrency.driver.harness import HarnessConfig
    from pytest_concurrency.engine import report
    from pytest_concurrency.engine.seeds import derive_seed, test_seed

    seed = (
        settings.seed if settings.seed is not None else test_seed(session.session_seed, item.nodeid)
    )
    reproduce_seed = settings.seed if settings.seed is not None else session.session_seed
    shard = shard_of(item, session.settings.shards)
    runs = settings.runs
    if shard is not None:
        index, count = shard
        seed = derive_seed("shard", seed, index)
        runs = max(1, math.ceil(settings.runs / count))
    workers = settings.worker_count(session.budget.usable)
    replay_runs = session.replay_runs
    replayed = session.settings
    if item.stash.get(AUDITED_KEY, False) and workers != replayed.workers:
        replayed = dataclasses.replace(replayed, workers=workers)  # the audit's own count
    extra = report.replay_options(
        replayed,
        workers=workers,
        run_all=session.run_all,
        replay_runs=replay_runs,
        given=session.given_settings,
    )
    return HarnessConfig(
        mode=settings.mode,
        workers=workers,
        runs=replay_runs or runs,
        seed=seed,
        timeout=settings.timeout or run_timeout(item),
        budget=None if replay_runs is not None else settings.budget,
        reproduce=report.reproduce_command(invocation_nodeid(item), reproduce_seed, extra),
        reproduce_options=extra,
        reproduce_seed=reproduce_seed,
        shard=shard,
        replay_runs=replay_runs,
        outer=outer_deadline(item, settings.mode),
    )


def make_runner(
    session: ConcurrencySession, item: pytest.Item, settings: Settings, workers: int, seed: int
) -> Runner:
    from pytest_concurrency.runners import make_perturbation, make_runner

    roots = session.roots(item, settings)
    if mode_of(settings.mode).workers_are_threads and settings.schedule != "off":
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
        settings.mode, workers, perturbation=perturbation, options=runner_options(settings, item)
    )


def run_async_harness(session: ConcurrencySession, item: pytest.Function) -> bool:
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
        aio.run_test_coroutine(body, borrowed_loop(item))
    except LoopBlocked as blocked:
        session.abandoned_threads.append(blocked.thread.name)
        session.abandoned_idents |= {blocked.thread.ident or 0}
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


def close_runner(session: ConcurrencySession, runner: Runner) -> None:
    __tracebackhide__ = True  # pytest-timeout may fire while a hung worker is joined
    runner.close()
    abandoned = getattr(runner, "abandoned_threads", [])
    session.abandoned_threads.extend(thread.name for thread in abandoned)
    session.abandoned_idents |= {t.ident for t in abandoned if t.ident is not None}


def concurrency_fixture(session: ConcurrencySession, request: pytest.FixtureRequest) -> Concurrency:
    from pytest_concurrency.driver.harness import Concurrency

    item = request.node
    marked = item.stash.get(SETTINGS_KEY, None)
    settings = marked or session.settings
    if is_async_test(item):
        settings = dataclasses.replace(settings, mode=COROUTINE_MODE)
    config = harness_config(session, item, settings)
    remembered = session.remembered(item, settings) if marked is None else None
    if remembered is not None:  # the harness's loops run with the remembered seed this time
        config = dataclasses.replace(
            remembered_config(item, config, remembered), runs=config.runs, budget=config.budget
        )

    def factory(mode: str, workers: int, schedule: str | None = None) -> Runner:
        chosen = dataclasses.replace(settings, mode=mode, schedule=schedule or settings.schedule)
        return make_runner(session, item, chosen, workers, config.seed)

    return Concurrency(config, factory)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def _deadline(budget: float) -> float:
    return time.monotonic() + budget


def check_failed_lines(loop: HarnessLoop, run: int, config: HarnessConfig) -> list[str]:
    from pytest_concurrency.engine import report

    outcome = loop.outcome
    command = report.reproduce_for(outcome, config.reproduce, run)
    return [
        f"FAILED after run {run} {report.run_position(outcome, run)} "
        f"({report.where(outcome, config.reproduce_seed)}): the check after the run failed",
        *report.observation_lines(outcome),
        "  " + report.REPRODUCE.format(command=command),
    ]


def runner_options(settings: Settings, item: pytest.Item | None = None) -> dict[str, Any]:
    """Mode-specific knobs for :func:`~pytest_concurrency.runners.make_runner`: the start
    method of processes; the loop coroutines borrow when pytest-asyncio ran the test's async
    fixtures on it."""
    if mode_of(settings.mode).start_method_matters:
        return {"start_method": settings.start_method, "hooks": pytest_hooks()}
    if mode_of(settings.mode).runs_coroutines and item is not None:
        loop = borrowed_loop(item)
        if loop is not None:
            return {"loop": loop}
    return {}


def borrowed_loop(item: pytest.Item) -> Any:
    """The event loop pytest-asyncio ran the test's async fixtures on (its body's tasks run
    there too), or None: the plugin's own."""
    if SHARED_LOOP_KEY not in item.stash:
        return None
    from pytest_concurrency.plugin.asyncio_fixtures import shared_loop

    return shared_loop(item)


def pytest_hooks() -> FrameworkHooks:
    """What process mode borrows from pytest (the runners never import it): its skip and xfail
    outcomes, rebuilt in the parent, and its assertion rewriting, pickled to the children."""
    from _pytest.assertion.rewrite import rewrite_asserts

    from pytest_concurrency.runners.framework import FrameworkHooks

    return FrameworkHooks(signal=pytest_signal, rewrite_asserts=rewrite_asserts)


def pytest_signal(kind: CallKind, text: str) -> BaseException | None:
    """pytest's own exception for a skip or xfail whose exception did not come back whole."""
    from pytest_concurrency.engine.outcomes import CallKind

    if kind is CallKind.SKIPPED:
        return pytest.skip.Exception(text)
    if kind is CallKind.XFAILED:
        return pytest.xfail.Exception(text)
    return None


def run_scaling(item: pytest.Function) -> bool:
    """A test marked ``scaling``: its body is the unit of work. (This frame stays visible:
    when every frame is hidden, pytest adds a line about hidden entries to the report.)"""
    from pytest_concurrency.plugin.scaling_hooks import run_scaling_marker

    run_scaling_marker(item)
    return True
