"""The GIL state around concurrent tests (issue 16): did it come back, and during what?

Read at the session's start, when collection is finished, before each concurrent test's setup
and after its call (:mod:`pytest_concurrency.engine.gilstate` compares the readings). A test
during which the GIL came back gets a report section and the ``gil_reenabled`` and
``gil_modules`` keys in its entry (every concurrent entry has ``gil_enabled``); the summary
names it. When it came back outside a concurrent test (collection, a plain test), the summary
says so and the next concurrent test is the one named. Under ``--concurrency-gil=fail`` the test
fails (in its call, or in its setup for a return found before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine import cores
from pytest_concurrency.engine.gilstate import (
    WHERE_BETWEEN,
    WHERE_COLLECTION,
    WHERE_TEST,
    GilReading,
    GilReturn,
    gil_came_back,
    mark_entry,
    read_gil,
)
from pytest_concurrency.plugin.entries import ENTRIES_KEY

if TYPE_CHECKING:
    from pytest_concurrency.engine.entries import Entry

GIL_BEFORE_KEY: pytest.StashKey[GilReading] = pytest.StashKey()
GIL_AFTER_KEY: pytest.StashKey[tuple[GilReading, GilReturn | None]] = pytest.StashKey()
FAIL = "fail"


class GilWatch:
    """The session's readings of the GIL state and the returns they showed."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.at_start = read_gil()
        self.last = self.at_start
        self.returns: list[GilReturn] = []
        self.pending: GilReturn | None = None  # found outside a test: the next one answers for it

    def hint(self) -> str:
        return messages.GIL_FAIL_HINT if self.policy == FAIL else messages.GIL_WARN_HINT

    def collection_finished(self) -> list[str]:
        """The line to show after "collected N items" when the GIL came back meanwhile."""
        back = self._read(WHERE_COLLECTION, None)
        if back is None:
            return []
        return [f"concurrency: {back.describe()} {self.hint()}"]

    def before_test(self, item: pytest.Item) -> None:
        """Before a concurrent test's setup; fails it under ``fail`` if the GIL came back
        since the last reading (during collection or a test that was not concurrent)."""
        self._read(WHERE_BETWEEN, item.nodeid)
        item.stash[GIL_BEFORE_KEY] = self.last
        pending, self.pending = self.pending, None
        if pending is not None and self.policy == FAIL:
            pytest.fail(f"{pending.describe()} {self.hint()}", pytrace=False)

    def after_call(self, item: pytest.Item, *, passed: bool) -> None:
        """After a concurrent test's call: name the test if the GIL came back during it (its
        setup included); under ``fail``, a body that passed fails."""
        before = item.stash.get(GIL_BEFORE_KEY, None)
        if before is None:
            return
        after = self.last = read_gil()
        back = gil_came_back(before, after, WHERE_TEST, item.nodeid)
        item.stash[GIL_AFTER_KEY] = (after, back)
        if back is None:
            return
        self.returns.append(back)
        text = f"{back.describe()} {self.hint()}"
        if passed and self.policy == FAIL:
            pytest.fail(text, pytrace=False)  # the failure's own text says it
        item.add_report_section("call", messages.GIL_REPORT_SECTION, text)

    def mark_entries(self, item: pytest.Item) -> None:
        """The GIL keys of the test's concurrent entries (before they leave with its report)."""
        read = item.stash.get(GIL_AFTER_KEY, None)
        if read is None:
            return
        after, back = read
        from pytest_concurrency.engine.entries import concurrent_entries

        entries = item.stash.get(ENTRIES_KEY, [])
        for entry in concurrent_entries(entries):
            mark_entry(entry, after, back)

    def summary_lines(self) -> list[str]:
        """Returns found outside a test, and the state at the end when it changed."""
        lines = [back.describe() for back in self.returns if back.where != WHERE_TEST]
        if not self.at_start.enabled and cores.gil_enabled():
            lines.append(
                messages.GIL_SUMMARY_STATE.format(interpreter=cores.describe_interpreter())
            )
        return lines

    def json_header(self, entries: Sequence[Entry]) -> dict[str, object]:
        """The JSON header's GIL keys: the returns found here outside tests, and those the
        tests' entries record (also the entries of pytest-xdist workers), in test order."""
        from pytest_concurrency.engine.entries import concurrent_entries
        from pytest_concurrency.engine.gilstate import returned_in

        outside = [back for back in self.returns if back.where != WHERE_TEST]
        during = [returned_in(entry) for entry in concurrent_entries(entries)]
        returns = outside + [back for back in during if back is not None]
        return {
            "gil_enabled_at_start": self.at_start.enabled,
            "gil_returns": [back.as_json() for back in returns],
        }

    def _read(self, where: str, nodeid: str | None) -> GilReturn | None:
        reading = read_gil()
        back = gil_came_back(self.last, reading, where, nodeid)
        self.last = reading
        if back is not None:
            self.returns.append(back)
            self.pending = back
        return back
