"""The call of a concurrent test: its settings turned into a harness config and a runner,
the marker's series, the unmarked async harness, and the ``concurrency`` fixture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.modes import COROUTINE_MODE, mode_of
from pytest_concurrency.engine.settings import Settings
from pytest_concurrency.errors import LoopBlocked
from pytest_concurrency.plugin.items import (
    AUDITED_KEY,
    SERIES_NOTE_KEY,
    SETTINGS_KEY,
    SHARED_LOOP_KEY,
    invocation_nodeid,
    is_async_test,
    is_xdist_worker,
    outer_deadline,
    run_timeout,
    shard_of,
    test_function,
)
from pytest_concurrency.plugin.verdicts import finish_outcome, record_outcome

if TYPE_CHECKING:  # imported where used: an unmarked suite never loads them
    from pytest_concurrency.driver.harness import Concurrency, HarnessConfig, HarnessLoop
    from pytest_concurrency.driver.progress import LiveProgress
    from pytest_concurrency.engine.crashes import SeriesFacts
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
    note = crash_note(item, config)
    body = call if note is None else noted_body(note, call, config)

    def series() -> None:
        __tracebackhide__ = True
        run_series(
            runner,
            [body] * config.workers,
            outcome=outcome,
            plan=plan,
            timeout=config.timeout,
            on_record=progress.update if progress is not None else None,
            rerun_failure=True,
        )

    try:
        if note is None:
            series()
        else:  # a crash's faulthandler dump names the test, its seed and the fix
            from pytest_concurrency.engine.crashes import call_with_note

            call_with_note(note, series)
    except BaseException:
        if outcome.interrupt is not None:  # pytest-timeout, Ctrl-C: the runs so far count
            record_outcome(session, item, outcome, config)
        raise
    finally:
        close_runner(session, runner)
        if progress is not None:
            progress.finish()
    return outcome


def series_facts(config: HarnessConfig) -> SeriesFacts:
    from pytest_concurrency.engine.crashes import SeriesFacts

    return SeriesFacts(
        mode=config.mode,
        workers=config.workers,
        runs=config.runs,
        budget=config.budget,
        seed=config.seed,
        reproduce_seed=config.reproduce_seed,
        reproduce=config.reproduce,
        shard=config.shard,
    )


def crash_note(item: pytest.Item, config: HarnessConfig) -> str | None:
    """Before a series: an isolated test's child tells its supervisor what it runs (None is
    returned: the supervisor reports a crash); in this process, with workers that share it,
    the note that a crash's faulthandler dump is to carry; None where a crash cannot take the
    session with it (process workers)."""
    tell = item.stash.get(SERIES_NOTE_KEY, None)
    if tell is not None:
        tell(series_facts(config))
        return None
    if not mode_of(config.mode).shares_process:
        return None
    from pytest_concurrency.engine.crashes import crash_note as note

    facts = series_facts(config)
    if is_xdist_worker(item.config):  # the controller names the test if the worker dies
        from pytest_concurrency.plugin.crash_notes import leave_note

        leave_note(item.config, item.nodeid, facts)
    return note(item.nodeid, facts)


def noted_body(
    note: str, call: Callable[[], object], config: HarnessConfig
) -> Callable[[], object]:
    """The body, called below the crash note in each worker thread where faulthandler shows
    only the thread that crashed (the GIL disabled); elsewhere the main thread's note is seen."""
    from pytest_concurrency.engine import cores

    if not mode_of(config.mode).workers_are_threads or cores.gil_enabled():
        return call
    from pytest_concurrency.engine.crashes import noted

    return functools.partial(noted(note), call)


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
        if mode_of(settings.mode).workers_are_threads and settings.data_races != "off":
            from pytest_concurrency.races.datarace import watch_data_races  # issue 18

            perturbation = watch_data_races(
                perturbation,
                roots=roots,
                seed=seed,
                policy=settings.data_races,
                allow=settings.data_race_allow,
            )
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
        settings = item.stash.get(SETTINGS_KEY, None) or session.settings
        aio.run_test_coroutine(body, borrowed_loop(item), clock=settings.clock)
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

    tell = item.stash.get(SERIES_NOTE_KEY, None)
    if tell is not None:  # an isolated test's child: its supervisor reports a crash
        tell(series_facts(config))

    def factory(mode: str, workers: int, schedule: str | None = None) -> Runner:
        chosen = dataclasses.replace(settings, mode=mode, schedule=schedule or settings.schedule)
        return make_runner(session, item, chosen, workers, config.seed)

    return Concurrency(config, factory)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def _deadline(budget: float) -> float:
    return time.monotonic() + budget


def check_failed_lines(
    loop: HarnessLoop, run: int, config: HarnessConfig, notes: Sequence[str] = ()
) -> list[str]:
    from pytest_concurrency.engine import report

    outcome = loop.outcome
    command = report.reproduce_for(outcome, config.reproduce, run)
    return [
        f"FAILED after run {run} {report.run_position(outcome, run)} "
        f"({report.where(outcome, config.reproduce_seed)}): the check after the run failed",
        *notes,
        *report.observation_lines(outcome),
        "  " + report.REPRODUCE.format(command=command),
    ]


def runner_options(settings: Settings, item: pytest.Item | None = None) -> dict[str, Any]:
    """Mode-specific knobs for :func:`~pytest_concurrency.runners.make_runner`: the start
    method of processes; the loop coroutines borrow when pytest-asyncio ran the test's async
    fixtures on it, else the clock of the plugin's own loop."""
    if mode_of(settings.mode).start_method_matters:
        return {"start_method": settings.start_method, "hooks": pytest_hooks()}
    if mode_of(settings.mode).runs_coroutines:
        loop = borrowed_loop(item) if item is not None else None
        if loop is not None:
            return {"loop": loop}  # pytest-asyncio's loop: its own clock, no injection
        return {"clock": settings.clock, "inject": settings.inject}
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
