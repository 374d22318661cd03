"""Per test: the window of tracked primitives, the lock-order verdict, the schedule's summary.

For every concurrent test in thread mode (marked ``concurrent``, or using the ``concurrency``
harness) with ``lock_order`` or ``data_races`` not ``off`` (the data-race watch learns its
happens-before from the tracked primitives) or a controlled ``schedule``, the window of
:mod:`pytest_concurrency.races.primitives` opens before the test's setup and closes after its
teardown, so that the locks its fixtures and its per-run setup make are tracked (and, under the
controlled scheduler, cooperative). At the end of the call:

* a lock-order inversion found in the test fails it (``lock_order="fail"``, the default) or
  warns (``"warn"``), with both acquisition sites; when the test failed anyway, the inversion
  is added to its failure as a note;
* the schedule's summary (PCT's n, k, d, m and the bound on a miss) and the inversions are
  added to the test's entry for the terminal summary and the JSON report.

Nothing is imported, patched or tracked for a test that needs none of it; the hooks themselves
are registered by the session only once collection found a test that may need them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.modes import mode_of
from pytest_concurrency.engine.settings import Settings
from pytest_concurrency.plugin.entries import ENTRIES_KEY
from pytest_concurrency.plugin.items import (
    SERIAL_KEY,
    SETTINGS_KEY,
    concurrent_marker,
    is_async_test,
    is_concurrent,
)

if TYPE_CHECKING:
    from pytest_concurrency.plugin.session import ConcurrencySession
    from pytest_concurrency.races.scheduler import ControlledScheduler
    from pytest_concurrency.races.tracker import LockTracker

LOCKWATCH_NAME = "concurrency-lockwatch"


class LockOrderWarning(pytest.PytestWarning):
    """A lock-order inversion (a potential deadlock) under ``lock_order="warn"``."""


@dataclass
class _Watch:
    """The open window of one test."""

    settings: Settings
    tracker: LockTracker
    stack: contextlib.ExitStack
    inversions: list[list[str]] = field(default_factory=list)


WATCH_KEY = pytest.StashKey[_Watch]()


class LockWatch:
    """The hooks; registered with the session's per-test hooks (see
    :meth:`~pytest_concurrency.plugin.session.ConcurrencySession.activate`)."""

    def __init__(self, session: ConcurrencySession) -> None:
        self.session = session

    # -- the window: from setup to teardown ---------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        settings = self.watched_settings(item)
        if settings is not None:
            self.open(item, settings)
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        try:
            return (yield)
        finally:
            self.close(item)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            return (yield)
        finally:
            self.close(item)  # after an interrupt skipped the teardown

    def pytest_unconfigure(self) -> None:
        primitives = sys.modules.get(
            "pytest_concurrency.races.primitives"
        )  # never imported: no window
        if primitives is not None and primitives.TRACKER.active:
            primitives.close_every_window()

    def watched_settings(self, item: pytest.Item) -> Settings | None:
        """The test's settings if it needs the window, else None (the session reports bad
        settings itself)."""
        if (
            not isinstance(item, pytest.Function)
            or not is_concurrent(item)
            or item.stash.get(SERIAL_KEY, None) is not None
            or is_async_test(item)
        ):
            return None
        settled = self.session.marked_settings(item)
        if isinstance(settled, str):
            return None  # the session fails the test's setup with the message
        settings = settled or self.session.settings
        if not mode_of(settings.mode).workers_are_threads:
            return None
        if settings.schedule == "off" and settings.lock_order == "off" == settings.data_races:
            return None
        return settings

    def open(self, item: pytest.Item, settings: Settings) -> None:
        # the fork server and the resource tracker make their locks when first imported:
        # never inside a window, or a process-mode run started in this test would keep them
        import multiprocessing.forkserver
        import multiprocessing.resource_tracker  # noqa: F401

        from pytest_concurrency.races import scheduler
        from pytest_concurrency.races.primitives import tracked_primitives

        scheduler.take_created()
        stack = contextlib.ExitStack()
        tracker = stack.enter_context(tracked_primitives(self.user_file_filter(item, settings)))
        item.stash[WATCH_KEY] = _Watch(settings, tracker, stack)

    def user_file_filter(self, item: pytest.Item, settings: Settings) -> Any:
        return self.session.code_filter(item, settings).is_user_file

    def close(self, item: pytest.Item) -> None:
        watch = item.stash.get(WATCH_KEY, None)
        if watch is not None:
            watch.stack.close()

    # -- the verdict, at the end of the call ----------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True  # a failure's traceback starts in the user's code, not here
        watch = item.stash.get(WATCH_KEY, None)
        resolved = item.stash.get(SETTINGS_KEY, None)
        marker = concurrent_marker(item)
        if (
            resolved is not None
            and marker is not None
            and "schedule" in marker.kwargs
            and resolved.schedule != "off"
            and not mode_of(resolved.mode).workers_are_threads
        ):
            pytest.fail(
                messages.SCHEDULE_NEEDS_THREADS.format(
                    schedule=resolved.schedule, nodeid=item.nodeid, mode=resolved.mode
                ),
                pytrace=False,
            )
        if watch is None:
            return (yield)
        try:
            result = yield
        except BaseException as exc:
            from pytest_concurrency.engine.outcomes import add_note

            for text in (self.schedule_text(item), self.inversion_text(watch)):
                if text:
                    add_note(exc, text)
            raise
        self.verdict(item, watch)
        return result

    def schedule_text(self, item: pytest.Item) -> str:
        """The interleaving of the last controlled run, when the check after it failed (the
        harness loop was inside a run); empty when that run's own failure already shows it."""
        from pytest_concurrency.races import scheduler

        fixture = getattr(item, "funcargs", {}).get("concurrency")
        loop = getattr(fixture, "active", None)
        made = scheduler.CREATED
        if not made or getattr(loop, "current", None) is None:
            return ""
        return "\n".join(made[-1].check_failed())

    def inversion_text(self, watch: _Watch) -> str:
        """The test's lock-order inversions, unless they are off or a deadlock showed them."""
        watch.inversions = watch.tracker.inversions()
        if not watch.inversions or watch.settings.lock_order == "off" or watch.tracker.deadlocks:
            return ""
        return "\n".join("\n".join(lines) for lines in watch.inversions)

    def verdict(self, item: pytest.Item, watch: _Watch) -> None:
        from pytest_concurrency.plugin.harness_entries import harness_of
        from pytest_concurrency.plugin.verdicts import warn_data_races

        harness = harness_of(item)  # a marked test warns when its series ends (verdicts)
        if harness is not None:
            warn_data_races(item, harness[1].outcome.data_races, watch.settings.data_races)
        text = self.inversion_text(watch)
        if not text:
            return
        if watch.settings.lock_order == "warn":
            item.warn(LockOrderWarning(f"{text}\n{messages.INVERSION_WARN_HINT}"))
            return
        pytest.fail(f"{text}\n{messages.INVERSION_FAIL_HINT}", pytrace=False)

    # -- the entry: schedule summary and inversions -----------------------------------------

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when == "call":
            self.annotate_entries(item)
        return report

    def annotate_entries(self, item: pytest.Item) -> None:
        scheduler = sys.modules.get(
            "pytest_concurrency.races.scheduler"
        )  # never imported: none made
        made = scheduler.take_created() if scheduler is not None else []
        watch = item.stash.get(WATCH_KEY, None)
        stashed = item.stash.get(ENTRIES_KEY, [])
        if not stashed:
            return
        from pytest_concurrency.engine.entries import concurrent_entries

        for entry in concurrent_entries(stashed):
            if made:
                entry["schedule"] = summarize(made)
            if watch is not None and watch.inversions and watch.settings.lock_order != "off":
                entry["lock_order"] = {
                    "verdict": watch.settings.lock_order,
                    "inversions": watch.inversions,
                }


def summarize(schedulers: Sequence[ControlledScheduler]) -> dict[str, Any]:
    """One summary for the schedulers of a test (the harness makes one per worker count)."""
    from pytest_concurrency.races.runreport import summary_of

    return summary_of(schedulers)
