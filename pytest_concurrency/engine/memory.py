"""The failing-seed memory: a failing concurrent test's seed and run, kept for the next session.

A race found once on a developer's machine should not be lost on the next plain ``pytest``: the
session that saw a test fail keeps the test's seed and failing run in pytest's cache (the
controller writes it at the end, from the entries of every xdist worker), and the next session
that runs the test with no seed of its own tries that seed first, up to the failing run, before
drawing a new one (as Hypothesis replays its failing examples). A test that passes with both is
forgotten. Pure module: the memory is plain JSON-able data, read and written by the plugin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pytest_concurrency.engine.entries import KIND_CONCURRENT, Entry

MAX_REMEMBERED = 1000
"""Tests kept at most (the most recent failures): the cache stays small in a huge suite."""


@dataclass(frozen=True)
class Remembered:
    """One failing test: the seed of its series, the run that failed, and the session seed
    of the session that saw it (the reproduction line's seed: the series seed derives from it
    and the test's id)."""

    seed: int
    run: int
    session_seed: int

    @property
    def runs(self) -> int:
        """How many runs replay the failing one (run seeds follow from the series seed)."""
        return self.run + 1


Memory = dict[str, Remembered]


def load(raw: object) -> Memory:
    """The memory from the cache's JSON; whatever is not a well-formed entry is dropped."""
    if not isinstance(raw, Mapping):
        return {}
    memory: Memory = {}
    for nodeid, value in raw.items():
        remembered = _entry(value)
        if isinstance(nodeid, str) and remembered is not None:
            memory[nodeid] = remembered
    return memory


def _entry(value: object) -> Remembered | None:
    if not isinstance(value, Mapping):
        return None
    numbers = [value.get(key) for key in ("seed", "run", "session_seed")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        return None
    seed, run, session_seed = numbers
    return Remembered(
        seed=seed,  # type: ignore[arg-type]
        run=run,  # type: ignore[arg-type]
        session_seed=session_seed,  # type: ignore[arg-type]
    )


def dump(memory: Memory) -> dict[str, dict[str, Any]]:
    return {nodeid: asdict(remembered) for nodeid, remembered in memory.items()}


def updated(
    memory: Memory, entries: Iterable[Entry], session_seed: int, *, forget: bool = True
) -> Memory:
    """The memory after a session: each concurrent test that failed in a run (or crashed the
    interpreter running it) is remembered with the seed it failed with; each that ran and
    passed is forgotten (when ``forget``:
    the session tried the remembered seeds, no seed of its own); the rest stay."""
    kept = dict(memory)
    for entry in entries:
        if entry.get("kind") != KIND_CONCURRENT:
            continue
        nodeid = entry.get("nodeid")
        if not isinstance(nodeid, str):
            continue
        failing_run, seed = _failing_run(entry), entry.get("seed")
        if isinstance(failing_run, int) and isinstance(seed, int):
            kept.pop(nodeid, None)  # re-inserted last: the most recent failures are kept
            kept[nodeid] = Remembered(seed=seed, run=failing_run, session_seed=session_seed)
        elif forget and entry.get("outcome") == "passed":
            kept.pop(nodeid, None)
    if len(kept) > MAX_REMEMBERED:
        kept = dict(list(kept.items())[-MAX_REMEMBERED:])
    return kept


CRASH_REPLAY_RUNS = 100
"""Runs a crash with no planned count (a budget hunt) is tried again with its seed."""


def _failing_run(entry: Entry) -> int | None:
    """The run to replay up to: the one that failed; for a crash, whose run died with the
    interpreter, the last run the series planned (the same seed replays the same runs)."""
    failing_run = entry.get("failing_run")
    if isinstance(failing_run, int) or not entry.get("crashed"):
        return failing_run if isinstance(failing_run, int) else None
    planned = entry.get("runs_planned")
    runs = planned if isinstance(planned, int) and planned > 0 else CRASH_REPLAY_RUNS
    return runs - 1
