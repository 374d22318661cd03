"""The call of a test ``--concurrency-all`` audits: once plainly, then concurrently while its
allowance lasts (the policy is :mod:`pytest_concurrency.engine.audit`).

The plain run comes first, in the calling thread: its duration is the test's plain cost, and
a failure there is the test's own (it fails without concurrency), reported as pytest reports
it, with a note and a serial entry that says so, never as a race. A coroutine body has no
plain run of its own (its loop is the runner's): its plain cost is estimated from its first
concurrent run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.modes import mode_of
from pytest_concurrency.plugin.entries import record_entry
from pytest_concurrency.plugin.items import AUDIT_ENTRY_KEY, STARTED_KEY

if TYPE_CHECKING:
    from pytest_concurrency.driver.harness import HarnessConfig
    from pytest_concurrency.engine.audit import AuditLedger
    from pytest_concurrency.engine.outcomes import CallKind, SeriesOutcome
    from pytest_concurrency.engine.settings import Settings


def start_audit(
    item: pytest.Function,
    settings: Settings,
    config: HarnessConfig,
    call: Callable[[], object],
    ledger: AuditLedger,
) -> AllowanceClock:
    """The audited test's plain run (a failure there is raised as the test's own), then the
    clock of its concurrent series (``plugin/calls.run_marked_series``)."""
    __tracebackhide__ = True
    started = time.monotonic()
    setup_started = item.stash.get(STARTED_KEY, started)
    ledger.start(setup_started)
    plain_call: float | None = None
    if not mode_of(settings.mode).runs_coroutines:
        run_plainly(item, call)
        plain_call = time.monotonic() - started
    return AllowanceClock(ledger, started - setup_started, plain_call, config.workers)


def call_plainly(call: Callable[[], object]) -> tuple[CallKind | None, BaseException | None]:
    """One plain single-worker call: None when it passed, else how it ended and what it
    raised; an interrupt (Ctrl-C, pytest's exit) is raised as it is."""
    from pytest_concurrency.engine.outcomes import CallKind, classify

    try:
        call()
    except BaseException as exc:
        kind = classify(exc)
        if kind is CallKind.INTERRUPTED:
            raise
        return kind, exc
    return None, None


def run_plainly(item: pytest.Function, call: Callable[[], object]) -> None:
    """The plain single-worker run: a failure is the test's own, raised as it is."""
    __tracebackhide__ = True
    from pytest_concurrency.engine.audit import FAILURE_OWN
    from pytest_concurrency.engine.outcomes import CallKind, add_note
    from pytest_concurrency.engine.report import serial_entry

    kind, exc = call_plainly(call)
    if exc is None:
        return
    if kind is CallKind.FAILED:
        entry = serial_entry(item.nodeid, messages.SERIAL_FAILED_PLAIN)
        entry["failure_class"] = FAILURE_OWN
        record_entry(item, entry)
        add_note(exc, messages.OWN_FAILURE_NOTE)
    else:
        record_entry(item, serial_entry(item.nodeid, messages.SERIAL_SKIPPED_PLAIN))
    raise exc


def rerun_plainly(item: pytest.Function, call: Callable[[], object]) -> None:
    """After a concurrent failure, the test once more, plainly: failing again, it is not
    repeatable (it depends on what a first run changed), the test's own failure."""
    from pytest_concurrency.engine.outcomes import CallKind

    entry = item.stash.get(AUDIT_ENTRY_KEY, None)
    if entry is None:
        return
    kind, _ = call_plainly(call)
    entry["plain_rerun"] = "failed" if kind is CallKind.FAILED else "passed"


class AllowanceClock:
    """Decides, before each concurrent run after the first, whether the test's allowance
    lasts; settles the allowance after the first run (when the shared-state points it met
    are known) and charges the ledger at the end."""

    def __init__(
        self, ledger: AuditLedger, setup: float, plain_call: float | None, workers: int
    ) -> None:
        self.ledger = ledger
        self.setup = max(0.0, setup)
        self.plain_call = plain_call
        self.workers = workers
        self.started = time.monotonic()
        self.deadline: float | None = None
        self.allowance: float | None = None
        self.points: int | None = None
        self.shared = True
        self.estimated: float | None = None  # a coroutine body's plain cost, once estimated
        self.perturbation: Any = None
        self.outcome: SeriesOutcome | None = None

    def watch(self, perturbation: Any, outcome: SeriesOutcome) -> None:
        """The series' perturbation (its shared-state points) and outcome; the first run's
        decision points end when what the test may spend is spent (``ledger.first_run``)."""
        self.perturbation = perturbation
        self.outcome = outcome
        if self.plain_call is not None:
            now = time.monotonic()
            self.stop_points_at(now + self.ledger.first_run(now, self.plain_cost()))

    def stop_points_at(self, deadline: float) -> None:
        """No decision points (perturbation, data-race watch) past ``deadline``, in a thread
        series (the data-race watch wraps the seeded perturbation that takes it)."""
        from pytest_concurrency.races.perturb import SeededPerturbation

        seeded = getattr(self.perturbation, "inner", self.perturbation)
        if isinstance(seeded, SeededPerturbation):
            seeded.stop_at = deadline

    def plain_cost(self) -> float:
        from pytest_concurrency.engine.audit import PLAIN_OVERHEAD

        if self.plain_call is None and self.estimated is not None:
            return self.estimated
        call = self.plain_call
        if call is None:  # a coroutine body: a worker's share of the first run
            call = (time.monotonic() - self.started) / max(1, self.workers)
        return call + PLAIN_OVERHEAD  # not the setup: it holds the plugin's own hooks

    def first_run_seen(self) -> None:
        from pytest_concurrency.engine.audit import touches_shared_state

        self.points, calls = shared_points(self.perturbation)
        self.shared = touches_shared_state(self.points, calls)

    def more(self) -> bool:
        if self.deadline is None:
            self.first_run_seen()
            now = time.monotonic()
            self.estimated = self.plain_cost()
            self.allowance = self.ledger.allowance(now, self.estimated, self.shared)
            self.deadline = now + self.allowance
            self.stop_points_at(self.deadline)
            if self.outcome is not None:
                self.outcome.budget = round(self.allowance, 4)
        return time.monotonic() < self.deadline

    def close(self, item: pytest.Item) -> None:
        from pytest_concurrency.engine.audit import audit_entry

        spent = time.monotonic() - self.started
        if self.deadline is None:  # one run only: it failed, or its count was one
            self.first_run_seen()
        plain = self.plain_cost()
        self.ledger.charge(plain, self.shared)
        item.stash[AUDIT_ENTRY_KEY] = audit_entry(
            plain=plain,
            concurrent=spent,
            allowance=self.allowance,
            points=self.points,
            shared=self.shared,
        )


def shared_points(perturbation: Any) -> tuple[int | None, int]:
    """How many shared-state points of the code under test the perturbation met, in how many
    calls; None points when it does not count them (off, the controlled scheduler, worker
    processes)."""
    stats = getattr(perturbation, "stats", None)
    points = getattr(stats, "points", None)
    calls = getattr(stats, "calls", 0)
    if not isinstance(points, int) or not isinstance(calls, int) or not calls:
        return None, 0
    return points, calls
