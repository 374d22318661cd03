"""Per-test entries for the summary and the JSON report, stashed on the item.

Entries are plain JSON-able dicts; the session attaches them to the test report so that they
survive the trip from a pytest-xdist worker to the controller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the types only: an unmarked suite never imports the engine's entries
    from pytest_concurrency.engine.entries import Entry

ENTRIES_KEY: pytest.StashKey[list[Entry]] = pytest.StashKey()
REPORT_ATTRIBUTE = "concurrency_entries"


def record_entry(item: pytest.Item, entry: Entry) -> None:
    item.stash.setdefault(ENTRIES_KEY, []).append(entry)


def take_entries(item: pytest.Item) -> list[Entry]:
    entries = item.stash.get(ENTRIES_KEY, [])
    item.stash[ENTRIES_KEY] = []
    return entries
