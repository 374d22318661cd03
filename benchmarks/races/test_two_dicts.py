"""An invariant across two structures, updated in two steps.

Every job is in exactly one of two dicts, ``pending`` or ``done``. ``complete`` pops it from one
and stores it in the other; a reader counting both in between sees a job missing. The twin
moves and counts under one lock.
"""

from __future__ import annotations

import threading

import pytest

RACE = "a job is in neither dict"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""

JOBS = 8


class JobBoard:
    def __init__(self) -> None:
        self.pending: dict[str, int] = {f"job-{n}": n for n in range(JOBS)}
        self.done: dict[str, int] = {}

    def complete(self, job: str) -> None:
        value = self.pending.pop(job)
        self.done[job] = value

    def reopen(self, job: str) -> None:
        value = self.done.pop(job)
        self.pending[job] = value

    def total(self) -> int:
        return len(self.pending) + len(self.done)


class LockedJobBoard(JobBoard):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def complete(self, job: str) -> None:
        with self._lock:
            super().complete(job)

    def reopen(self, job: str) -> None:
        with self._lock:
            super().reopen(job)

    def total(self) -> int:
        with self._lock:
            return super().total()


def move_or_count(board: JobBoard, concurrency) -> None:
    if concurrency.worker % 2:
        assert board.total() == JOBS, "a job is in neither dict"
    else:
        job = f"job-{concurrency.worker}"
        board.complete(job)
        board.reopen(job)


@pytest.fixture
def board() -> JobBoard:
    return JobBoard()


@pytest.fixture
def locked_board() -> JobBoard:
    return LockedJobBoard()


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=200)
def test_buggy(board, concurrency):
    move_or_count(board, concurrency)


@pytest.mark.concurrent(workers=4, runs=200)
def test_fixed(locked_board, concurrency):
    move_or_count(locked_board, concurrency)
