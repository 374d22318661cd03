"""The report entries: one JSON-able record per test, typed, for the summary, JSON and JUnit.

An entry is a plain dict (it travels on the test report from a pytest-xdist worker to the
controller, and is written to the JSON report as it is), typed here so that mypy checks every
key that is written or read. Entries are built in :mod:`pytest_concurrency.engine.report`
(concurrent and serial) and by the scaling hooks (scaling); the lock watch adds ``schedule``
and ``lock_order`` to a concurrent entry; the session adds ``outcome`` when it collects one;
an isolated test's supervisor builds the entry of a test whose interpreter died
(:func:`pytest_concurrency.engine.report.crashed_entry`).
Pure module: no pytest import.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypedDict, cast

from pytest_concurrency.engine.dataraces import DataRaceEntry

KIND_CONCURRENT = "concurrent"
KIND_SERIAL = "serial"
KIND_SCALING = "scaling"


class FailureGroupEntry(TypedDict):
    """One group of failures of the failing run: same exception type at the same line."""

    origin: str
    exception: str
    file: str
    line: int
    count: int
    workers: list[int]
    runs: list[int]
    message: str


class InjectionEntry(TypedDict):
    """One cancellation or early timeout injected in the failing run (asyncio mode, issue 19)."""

    run: int
    worker: int
    file: str
    line: int
    kind: str  # "cancel": CancelledError at an await; "timeout": a timeout expired early


class _ConcurrentFields(TypedDict):
    kind: str
    nodeid: str
    mode: str
    workers: int
    runs_planned: int | None
    budget: float | None
    runs_done: int
    calls: int
    seed: int
    failing_run: int | None
    failing_run_seed: int | None
    hung_workers: list[int]
    failures: list[FailureGroupEntry]
    collateral_workers: list[int]  # gave up at concurrency.barrier() after another one failed
    observations: dict[str, int]
    reproduce: str | None
    interrupted: str | None


class AuditEntry(TypedDict):
    """What ``--concurrency-all``'s audit spent on one test (engine/audit.py)."""

    plain_seconds: float  # the plain run: its call and pytest's own share (engine/audit.py)
    concurrent_seconds: float
    allowance_seconds: float | None  # None: a fixed run count
    shared_state: bool  # its first concurrent run met shared state of the code under test
    shared_points: int | None  # how many such points; None: not counted (no perturbation)
    plain_rerun: str | None  # after a concurrent failure, a plain run again: passed or failed


class ConcurrentEntry(_ConcurrentFields, total=False):
    """A test run concurrently (marker, ``--concurrency-all`` or the harness): the JSON
    report's ``tests`` entries."""

    shard: int
    shards: int
    base_nodeid: str
    schedule: dict[str, Any]  # the controlled scheduler's summary (the lock watch adds it)
    lock_order: dict[str, Any]  # {"verdict": ..., "inversions": [...]} (the lock watch)
    data_races: list[DataRaceEntry]  # unordered conflicting accesses (thread mode, issue 18)
    outcome: str  # pytest's word for the test (the session adds it)
    gil_enabled: bool  # the GIL state when the test's call ended (plugin/gilwatch.py)
    gil_reenabled: bool  # the GIL was off when the test began and on when its call ended
    gil_modules: list[str]  # then: the extension modules first imported meanwhile
    isolated: bool  # ran setup to teardown in a supervised child process (plugin/isolation.py)
    crashed: bool  # the interpreter running it died (a segfault, an abort, a fatal error)
    signal: str | None  # what killed it ("SIGSEGV"); None when it exited with a code
    exit_code: int | None  # the code it exited with, when no signal killed it
    crash_phase: str  # "setup", "call" or "teardown": the phase it died in
    crash_stacks: str  # faulthandler's dump of every thread; "" when none was written
    audit: AuditEntry  # an audited test (--concurrency-all): its cost
    failure_class: str  # a failed test: "concurrent" (only so), "internal" (the plugin's), or
    # "own" (an audited test that fails again when rerun plainly: not repeatable)
    under_test: list[str]  # a failed test: where it failed inside the packages under test
    clock: str  # asyncio mode: "virtual" or "real" (the loop's clock, engine/aiorun.py)
    injections: list[InjectionEntry]  # asyncio mode: the failing run's injections
    fails_without_reordering: bool | None  # asyncio mode: the failure in plain FIFO order
    without_reordering_from: str | None  # what that was judged from: "rerun" (on the real
    # clock), "failing run" (itself plain), "run 0" (the rerun skipped); None: no failure
    rerun_skipped: str | None  # why the real-clock FIFO rerun was not made; None: made or moot


class _SerialFields(TypedDict):
    kind: str
    nodeid: str
    reason: str


class SerialEntry(_SerialFields, total=False):
    """A test ``--concurrency-all`` ran once, normally, and why."""

    outcome: str
    failure_class: str  # "own": it failed in its plain single-worker run


ScalingEntry = dict[str, Any]
"""A scaling measurement: ``kind``, ``nodeid`` and the scaling report's own JSON
(:func:`pytest_concurrency.scaling.report.report_json`), whose shape the scaling room owns."""

Entry = ConcurrentEntry | SerialEntry | ScalingEntry


def kind_of(entry: Entry) -> str:
    return str(entry.get("kind"))


def concurrent_entries(entries: Iterable[Entry]) -> list[ConcurrentEntry]:
    return [cast(ConcurrentEntry, e) for e in entries if kind_of(e) == KIND_CONCURRENT]


def serial_entries(entries: Iterable[Entry]) -> list[SerialEntry]:
    return [cast(SerialEntry, e) for e in entries if kind_of(e) == KIND_SERIAL]


def scaling_entries(entries: Iterable[Entry]) -> list[ScalingEntry]:
    return [cast(ScalingEntry, e) for e in entries if kind_of(e) == KIND_SCALING]


def with_outcome(entry: Entry, outcome: str) -> Entry:
    """A copy of ``entry`` with pytest's word for how the test ended."""
    return cast(Entry, {**entry, "outcome": outcome})
