"""What a concurrent test's series comes to: its entry for the summary and the JSON report
(with the audit's failure class and the places under test), the notes its failure report
carries, and the failure pytest shows (or the fix, when pytest's own fixture lookup broke).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.modes import mode_of
from pytest_concurrency.plugin.entries import record_entry
from pytest_concurrency.plugin.items import (
    AUDIT_ENTRY_KEY,
    SETTINGS_KEY,
    SHARED_LOOP_KEY,
    warning_checks,
)

if TYPE_CHECKING:  # imported where used: an unmarked suite never loads them
    from pytest_concurrency.driver.harness import HarnessConfig
    from pytest_concurrency.engine.dataraces import DataRace
    from pytest_concurrency.engine.outcomes import SeriesOutcome
    from pytest_concurrency.plugin.session import ConcurrencySession


class ConcurrencyDataRaceWarning(pytest.PytestWarning):
    """A data race under ``data_races="warn"`` (issue 18): shown in the warnings summary, and
    a failure under ``-W error::pytest_concurrency.plugin.verdicts.ConcurrencyDataRaceWarning``."""


def warn_data_races(item: pytest.Item, races: list[DataRace], policy: str) -> None:
    """Under ``policy`` "warn", the test's data races as one pytest warning (called inside the
    test's call, so that ``-W error::...`` fails the test rather than the report)."""
    if policy != "warn" or not races:
        return
    from pytest_concurrency.engine.dataraces import race_lines

    text = "\n".join(race_lines(races, failing=False))
    item.warn(ConcurrencyDataRaceWarning(messages.DATA_RACE_WARNING.format(text=text)))


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
    settings = item.stash.get(SETTINGS_KEY, None) or session.settings
    warn_data_races(item, outcome.data_races, settings.data_races)


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
    if not mode_of(config.mode).shares_process or warning_filters_are_per_context():
        return []
    checks = warning_checks(item)
    if not checks:
        return []
    return [messages.WARNING_CHECKS_NOT_THREAD_SAFE.format(names=" / ".join(checks))]


def warning_filters_are_per_context() -> bool:
    """Are the warning filters kept per thread and context (``sys.flags.context_aware_warnings``:
    on by default on 3.14's free-threaded build)? Then ``catch_warnings`` and ``pytest.warns``
    in one worker leave the others' filters alone, and the note above would be wrong."""
    return bool(getattr(sys.flags, "context_aware_warnings", False))


def fail_fixture_lookup(
    item: pytest.Function, outcome: SeriesOutcome, config: HarnessConfig
) -> None:
    """Fail with the fix when a worker's ``request.getfixturevalue()`` broke inside pytest's
    fixture machinery (its own ``AssertionError``, not the user's race); every origin of the
    run is still listed below the message. (This frame stays visible: see calls.run_scaling.)"""
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
