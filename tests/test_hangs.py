"""What the report says a hung worker waits on (pytest_concurrency.runners.hangs), branch by branch.

The common case, a worker waiting on a lock another worker holds, is shown end to end by the
hang tests in test_faults.py; these cover the other holders with the tracker's answer faked.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.races import tracker
from pytest_concurrency.runners import hangs

SITE = ("/work/app/store.py", 12)
TAKEN_AT = ("/work/app/store.py", 30)
ME = threading.get_ident()


def waits_on(monkeypatch: pytest.MonkeyPatch, holder: int | None) -> None:
    def waiting_on(ident: int) -> Any:
        return ("Lock#3", SITE, holder, TAKEN_AT) if ident == ME else None

    monkeypatch.setattr(tracker.TRACKER, "waiting_on", waiting_on)


def ended_thread_ident() -> int:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    assert thread.ident is not None
    return thread.ident


def test_no_wait_line_for_a_thread_that_waits_on_no_tracked_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits_on(monkeypatch, holder=None)
    assert hangs.lock_wait(ME + 1, {}) is None


def test_no_wait_line_when_lock_tracking_never_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "pytest_concurrency.races.tracker")
    assert hangs.lock_wait(ME, {}) is None


def test_a_free_lock_is_said_to_be_held_by_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    waits_on(monkeypatch, holder=None)
    assert hangs.lock_wait(ME, {}) == messages.HANG_WAITS_ON_FREE_LOCK.format(
        what="Lock#3", site="store.py:12"
    )


def test_a_lock_held_through_an_old_reference_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    waits_on(monkeypatch, holder=tracker.UNKNOWN_HOLDER)
    line = hangs.lock_wait(ME, {})
    assert line is not None and "reference taken before the test began" in line


@pytest.mark.parametrize(
    ("holder", "workers", "named"),
    [
        (ME, {ME: 2}, "worker 2"),
        (ME, {}, f"thread {threading.current_thread().name!r}"),
        (None, {}, "a thread that has ended"),
    ],
    ids=["worker", "other-thread", "ended-thread"],
)
def test_the_holder_is_named_as_a_worker_a_thread_or_an_ended_thread(
    monkeypatch: pytest.MonkeyPatch, holder: int | None, workers: dict[int, int], named: str
) -> None:
    waits_on(monkeypatch, holder=ended_thread_ident() if holder is None else holder)
    line = hangs.lock_wait(ME, workers)
    assert line is not None
    assert f"held by {named}" in line and "who took it at store.py:30" in line


def test_the_hung_threads_description_ends_with_the_wait_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits_on(monkeypatch, holder=None)
    text = hangs.describe_hung_thread(sys._getframe(), ME, {})
    assert "test_the_hung_threads_description_ends_with_the_wait_line" in text
    assert text.endswith("nobody holds it now\n")
