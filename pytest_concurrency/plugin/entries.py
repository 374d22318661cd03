"""Per-test entries for the summary and the JSON report, stashed on the item.

Entries are plain JSON-able dicts; the session attaches them to the test report so that they
survive the trip from a pytest-xdist worker to the controller.
"""

from __future__ import annotations

from typing import Any

import pytest

ENTRIES_KEY = pytest.StashKey[list[dict[str, Any]]]()
REPORT_ATTRIBUTE = "concurrency_entries"


def record_entry(item: pytest.Item, entry: dict[str, Any]) -> None:
    item.stash.setdefault(ENTRIES_KEY, []).append(entry)


def take_entries(item: pytest.Item) -> list[dict[str, Any]]:
    entries = item.stash.get(ENTRIES_KEY, [])
    item.stash[ENTRIES_KEY] = []
    return entries
