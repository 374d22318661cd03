"""The state of one controlled run: statuses, gates, the steps taken and their fingerprint.

The controlled scheduler (:mod:`pytest_concurrency.races.scheduler`) keeps one
:class:`RunState` per run and a :class:`RunSummary` of each finished one; what a failed run's
report shows of it is in :mod:`pytest_concurrency.races.runreport`. Also here: what the
operating system says of a worker's thread (:func:`os_thread_state`), to tell one asleep in C.

Pure module: no pytest import.
"""

from __future__ import annotations

import _thread
import hashlib
import os
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from pytest_concurrency.races.lockgraph import UNKNOWN_SITE, Site
from pytest_concurrency.races.strategies import RunCoverage
from pytest_concurrency.races.tracker import Blocked

_allocate_lock = _thread.allocate_lock

HISTORY_STEPS = 512
NO_SITE: Site = ("", 0)  # a step that is an event (end, detach, deadlock), not a line


class Status(Enum):
    ARRIVING = "arriving"
    READY = "ready"  # running, or waiting for the token (blocked or not)
    DETACHED = "detached"  # ran past the step deadline; runs uncontrolled until its next point
    DONE = "done"


class Step(NamedTuple):
    """One scheduling point: which worker, where, and what (empty for a shared-state access)."""

    number: int
    worker: int
    site: Site
    label: str = ""


_STEP_KEYS: dict[tuple[Site, str], int] = {}
FINGERPRINT_MASK = (1 << 64) - 1


def step_key(site: Site, label: str) -> int:
    """A number for (file name, line, kind of step), the same in every process."""
    key = _STEP_KEYS.get((site, label))
    if key is None:
        kind = label.split(" ", 1)[0]
        text = f"{os.path.basename(site[0])}:{site[1]}:{kind}"
        key = _STEP_KEYS[(site, label)] = int.from_bytes(
            hashlib.blake2b(text.encode(), digest_size=8).digest(), "big"
        )
    return key


@dataclass
class RunState:
    """The state of one run: gates, statuses, what each blocked worker waits for, history."""

    index: int
    seed: int
    workers: int
    gates: list[Any]
    status: list[Status]
    idents: list[int]
    native_ids: list[int]
    blocked: list[Blocked | None]
    doomed: list[str | None]
    timed_out: list[bool]
    virtual_deadline: list[float]
    history: deque[Step] = field(default_factory=lambda: deque(maxlen=HISTORY_STEPS))
    fingerprint: int = 0
    current: int | None = None
    arrived: int = 0
    finished: int = 0
    points: int = 0
    decisions: int = 0
    detaches: int = 0
    progress_at: float = 0.0
    sleep_until: float = 0.0
    idle_since: float | None = None
    asleep_since: tuple[float, float, int] | None = None  # (step began, first look, CPU ticks)
    virtual_clock: float = 0.0
    deadlock: str | None = None
    aborted: bool = False
    coverage: RunCoverage | None = None
    clean: bool | None = None

    @classmethod
    def new(cls, index: int, seed: int, workers: int) -> RunState:
        gates = []
        for _ in range(workers):
            gate = _allocate_lock()
            gate.acquire()
            gates.append(gate)
        return cls(
            index=index,
            seed=seed,
            workers=workers,
            gates=gates,
            status=[Status.ARRIVING] * workers,
            idents=[0] * workers,
            native_ids=[0] * workers,
            blocked=[None] * workers,
            doomed=[None] * workers,
            timed_out=[False] * workers,
            virtual_deadline=[0.0] * workers,
        )

    def record(self, worker: int, site: Site, label: str = "") -> None:
        self.points += 1
        if site == UNKNOWN_SITE:
            return  # the plugin's own use of a primitive (the runner's barrier): not shown
        self.history.append(Step(self.points, worker, site, label))
        key = step_key(site, label) ^ (worker + 1)
        self.fingerprint = (self.fingerprint * 1_000_003 + key) & FINGERPRINT_MASK

    @property
    def interleaving(self) -> str:
        """The fingerprint of every step of the run, in order: equal for equal interleavings."""
        return f"{self.fingerprint:016x}"


@dataclass(frozen=True)
class RunSummary:
    """What one finished run tells about the schedule (kept for the guarantee and the JSON)."""

    workers: int
    points: int
    decisions: int
    detaches: int
    coverage: RunCoverage
    clean: bool | None


SLEEPING_STATES = frozenset("SD")
"""/proc thread states of a thread waiting in the kernel (a lock, I/O, a sleep)."""


def os_thread_state(native_id: int) -> tuple[str, int] | None:
    """(state letter, CPU ticks) of a thread of this process from /proc; None elsewhere."""
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as stat:
            text = stat.read().decode()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    try:
        return fields[0], int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None
