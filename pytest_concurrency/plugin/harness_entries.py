"""The report entries of tests that used ``concurrency.runs()``, and how a report's entries
reach the session (also from xdist workers and after Ctrl-C).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_concurrency.plugin.calls import check_failed_lines
from pytest_concurrency.plugin.entries import (
    ENTRIES_KEY,
    REPORT_ATTRIBUTE,
    record_entry,
    take_entries,
)
from pytest_concurrency.plugin.items import (
    OUTCOME_INTERRUPTED,
    SETTINGS_KEY,
    outcome_word,
)

if TYPE_CHECKING:  # imported where used: an unmarked suite never loads them
    from pytest_concurrency.driver.harness import Concurrency, HarnessLoop
    from pytest_concurrency.engine.entries import ConcurrentEntry, Entry
    from pytest_concurrency.plugin.session import ConcurrencySession


def before_call_report(
    session: ConcurrencySession, item: pytest.Item, call: pytest.CallInfo[None]
) -> None:
    """The call phase is over: the harness's entry, and the entries' junit properties."""
    record_harness(session, item, call)
    session.gil.mark_entries(item)
    entries = item.stash.get(ENTRIES_KEY, [])
    if entries:
        from pytest_concurrency.engine.report import junit_properties

        for entry in entries:  # --junitxml <property> elements
            item.user_properties.extend(junit_properties(entry))


def record_harness(
    session: ConcurrencySession, item: pytest.Item, call: pytest.CallInfo[None]
) -> None:
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
        notes = [*run.notes, *(run.explain() if run.explain is not None else [])]
        lines = check_failed_lines(loop, run.index, fixture.config, notes)
        add_note(error, "\n".join(lines))
        from pytest_concurrency.engine.report import reproduce_for

        command = reproduce_for(loop.outcome, fixture.config.reproduce, run.index)
        entry["failing_run"], entry["reproduce"] = run.index, command
        if run.loop_run is not None:  # asyncio: the run the check failed after
            run.loop_run.write(entry)
    record_entry(item, entry)


def with_outcome(entry: Entry, word: str) -> Entry:
    from pytest_concurrency.engine.entries import with_outcome as add

    return add(entry, word)


def collect_entries(session: ConcurrencySession, report: pytest.TestReport) -> None:
    """The entries a report carries (from this process or an xdist worker), with the
    test's outcome, for the summary and the JSON report."""
    entries = getattr(report, REPORT_ATTRIBUTE, None)
    if not entries:
        return
    word = outcome_word(report)
    for entry in entries:
        session.entries.append(with_outcome(entry, word))


def record_harness_interrupt(
    session: ConcurrencySession, item: pytest.Item, interrupt: BaseException
) -> None:
    """Ctrl-C or pytest.exit() in a harness test: no report follows, so its entry is made
    here, while the fixture is still there."""
    harness = harness_of(item)
    if harness is not None:
        record_entry(item, harness_entry(item, *harness, interrupt=interrupt))


def collect_interrupted(session: ConcurrencySession) -> None:
    """Ctrl-C: the running test gets no report; its entry (the runs it made, what cut them
    short) still goes to the summary and the JSON report."""
    item, session.running = session.running, None
    if item is not None:
        for entry in take_entries(item):
            session.entries.append(with_outcome(entry, OUTCOME_INTERRUPTED))


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
) -> ConcurrentEntry:
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
