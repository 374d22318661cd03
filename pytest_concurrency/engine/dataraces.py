"""A data race as the reports show it: a location, a kind, and the two accesses nothing orders.

Found by :mod:`pytest_concurrency.races.datarace` while a run goes on, whether or not the run
broke; kept here as plain values, so that the failure text, the terminal summary and the JSON
``data_races`` field are made by pure functions. A race that fails its run is counted into
the run's failures as a stand-in :class:`~pytest_concurrency.engine.outcomes.CallFailure` whose
origin type is :data:`DATA_RACE_ORIGIN` (no call raised it: the reports count it apart, see
:func:`pytest_concurrency.engine.outcomes.call_failures`).
Pure module: no pytest import.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

from pytest_concurrency import messages

DATA_RACE_ORIGIN = "DataRace"
KIND_STALE_READ = "read-then-write"
"""A worker read a location, then wrote it, while another worker's write of it was not ordered
with the read: an update is lost, or acted on a stale check (lazy init, check-then-act)."""
KIND_ITERATION = "iterate-while-mutate"
"""A worker iterated a container that another worker changed, with nothing ordering them."""
KIND_TORN_READ = "torn-read"
"""A worker read two containers that another worker changed in two steps (written in the
order they were read), with nothing ordering them: it can see a half-done update."""
KIND_ORDER = (KIND_STALE_READ, KIND_ITERATION, KIND_TORN_READ)
MAX_RACES_SHOWN = 5
POLICIES = ("fail", "warn", "off")


class RaceAccessEntry(TypedDict):
    worker: int
    file: str
    line: int
    op: str  # "read" or "write"
    locks: list[str]
    path: list[str]  # the user's calls that led to it, outermost first


class DataRaceEntry(TypedDict):
    """One entry of a concurrent test's ``data_races`` (JSON report)."""

    location: str
    kind: str
    accesses: list[RaceAccessEntry]
    run: int


@dataclass(frozen=True)
class RaceAccess:
    worker: int
    file: str
    line: int
    op: str
    locks: tuple[str, ...] = ()
    path: tuple[str, ...] = ()

    def entry(self) -> RaceAccessEntry:
        return {
            "worker": self.worker,
            "file": self.file,
            "line": self.line,
            "op": self.op,
            "locks": list(self.locks),
            "path": list(self.path),
        }

    def text(self) -> str:
        held = ", ".join(self.locks) if self.locks else messages.DATA_RACE_NO_LOCK
        return messages.DATA_RACE_ACCESS.format(
            worker=self.worker,
            op=self.op,
            site=f"{os.path.basename(self.file)}:{self.line}",
            path=messages.DATA_RACE_PATH.format(path=" > ".join(self.path)) if self.path else "",
            locks=held,
        )


@dataclass(frozen=True)
class DataRace:
    """Two accesses of ``location`` by different workers, one a write, nothing ordering them;
    ``acted_at`` is where the reader of a read-then-write wrote what it read; ``also`` the
    second location of a torn read."""

    location: str
    kind: str
    accesses: tuple[RaceAccess, RaceAccess]
    run: int
    acted_at: tuple[str, int] | None = None
    also: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """One race per location and kind is reported: the first pair found."""
        return self.location, self.kind

    def entry(self) -> DataRaceEntry:
        return {
            "location": self.location,
            "kind": self.kind,
            "accesses": [access.entry() for access in self.accesses],
            "run": self.run,
        }

    def lines(self) -> list[str]:
        first, second = self.accesses
        template = {
            KIND_STALE_READ: messages.DATA_RACE_STALE_READ,
            KIND_TORN_READ: messages.DATA_RACE_TORN_READ,
        }.get(self.kind, messages.DATA_RACE_ITERATION)
        acted = self.acted_at or (first.file, first.line)
        headline = template.format(
            location=self.location,
            reader=first.worker,
            other=second.worker,
            op=second.op,
            acted=f"{os.path.basename(acted[0])}:{acted[1]}",
            also=self.also or "?",
        )
        return [headline, first.text(), second.text()]


def ordered(races: Iterable[DataRace]) -> list[DataRace]:
    """Read-then-write first (lost updates, stale checks), then iteration; by location."""
    return sorted(races, key=lambda race: (KIND_ORDER.index(race.kind), race.location))


def allowed(location: str, allow: Sequence[str]) -> bool:
    """Is ``location`` on the benign-race allow list (shell patterns: ``Stats.*``)?"""
    return any(fnmatch.fnmatchcase(location, pattern) for pattern in allow)


def race_lines(races: Sequence[DataRace], *, failing: bool) -> list[str]:
    """The report's lines for the races of one run, with what to do about them."""
    if not races:
        return []
    shown = ordered(races)
    lines = [messages.DATA_RACE_HEADER.format(count=len(races))]
    for race in shown[:MAX_RACES_SHOWN]:
        lines.extend(race.lines())
    if len(shown) > MAX_RACES_SHOWN:
        lines.append(messages.DATA_RACE_MORE.format(count=len(shown) - MAX_RACES_SHOWN))
    lines.append(messages.DATA_RACE_FAIL_HINT if failing else messages.DATA_RACE_WARN_HINT)
    return lines
