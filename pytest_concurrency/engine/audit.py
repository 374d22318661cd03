"""The affordable default of ``--concurrency-all``: how a session's audit spreads its cost.

A test that ``--concurrency-all`` marks (not one the user marked ``concurrent``, and not when
``--concurrency-runs`` or a replay count is given) is *audited*: it runs once plainly, in the
calling thread (its plain cost: that call and pytest's own share, :data:`PLAIN_OVERHEAD`; a
failure there is the test's own), then concurrently: the first concurrent run always (never
zero), more while its allowance lasts, at most its run count.

The allowance (:meth:`AuditLedger.allowance`):

- by default, each test earns ``cost`` times its plain cost (``cost`` is
  ``--concurrency-audit-cost``, default 8), and the audit may spend, in wall time from the
  first audited test on, what the tests so far have earned: the whole audit costs about
  ``cost`` times the plain run. A test whose first concurrent run met no shared state of the
  code under test (:func:`touches_shared_state`) earns 1 + :data:`QUIET_SHARE` of ``cost - 1``
  times its plain cost. A test's allowance is what is earned and not yet spent.
- with ``--concurrency-budget=SECONDS`` under run-all, the seconds are the session's, from
  the first audited test on, split over the audited tests still to run (under pytest-xdist,
  over this worker's share of them): each gets what is left over the tests left, four times
  as much for a test that touches shared state as for a quiet one. A slow test gets the same
  seconds, so fewer runs.

Pure module: no pytest import.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pytest_concurrency import messages
from pytest_concurrency.engine.entries import (
    AuditEntry,
    ConcurrentEntry,
    Entry,
    concurrent_entries,
    serial_entries,
)
from pytest_concurrency.engine.owncode import is_below, is_plugin_file
from pytest_concurrency.engine.settings import DEFAULT_AUDIT_COST

AUDIT_WORKERS = 2
"""Workers per run of an audited test when ``--concurrency-workers`` is not given: two are
what most races need, and a run of four costs twice as much (the GIL serialises them);
the long hunt (``--concurrency-runs``) keeps the default of four."""
QUIET_SHARE = 0.25
"""The share of the allowance of a test whose first concurrent run met no shared state."""
SHARED_POINTS_PER_CALL = 10
"""A test *touches shared state* when its first concurrent run met at least this many
shared-state points of the code under test per call (a body that calls into the package under
test does; a body of a few plain statements does not)."""
SLOW_TEST_SECONDS = 1.0
"""A test whose plain cost is over this earns its plain cost plus ``cost - 1`` times this
much: one slow test must not take the audit of a whole suite (issue 17: "a slow test gets
fewer runs, never zero")."""
PLAIN_OVERHEAD = 0.002
"""Seconds pytest itself spends on each test of a plain run (its setup and teardown, hooks,
reports), beside the test's call: the plain cost is the plain call's duration plus this (a
plain pytest session of small tests spends 2-4 ms per test on this machine; the audited
session's own setup is not measured, since it holds the plugin's hooks)."""

FIRST_RUN_FLOOR = 1.0
"""The first concurrent run of a test is perturbed and watched for at least this many times
its plain cost, whatever the audit's debt (the run itself always happens: never zero)."""

USER_FACING_ERRORS = "pytest_concurrency.errors"
"""The module of the plugin's exceptions meant for the user (a barrier given up, a bad
setting): raised on purpose, never an internal error."""
FAILURE_OWN = "own"
"""Fails in a plain single-worker run: the test's own failure, not a race."""
FAILURE_CONCURRENT = "concurrent"
"""Fails only concurrently: a race, at the origins the entry names."""
FAILURE_INTERNAL = "internal"
"""Raised inside the plugin itself: an internal error, never a race."""


@dataclass
class AuditLedger:
    """The session's audit: its policy and what it has spent so far (this process).

    The ledger keeps wall time, from the first audited test's setup (``started``): whatever
    the plugin spends on a test (its runs, its runner, its reports) counts against what the
    tests so far have earned, so that a test whose first concurrent run cost more than its
    share (a tiny test: a run's fixed cost is over its plain cost) is paid for by the next
    ones, which then get only their first run, and a test that ended early (its run count
    reached) leaves its share to the next."""

    cost: float = DEFAULT_AUDIT_COST
    budget: float | None = None  # the session's seconds (--concurrency-budget under run-all)
    tests_left: int = 0
    started: float | None = None  # monotonic seconds: the first audited test's setup
    earned: float = 0.0  # what the tests charged so far may cost, plain runs included
    weights: list[float] = field(default_factory=list)

    def start(self, at: float) -> None:
        if self.started is None:
            self.started = at

    def share(self, plain_cost: float, shared: bool) -> float:
        """What one test may cost, its plain run included: a slow test (over
        :data:`SLOW_TEST_SECONDS`) earns on that much only, so it gets fewer runs."""
        weight = 1.0 if shared else QUIET_SHARE
        extra = max(0.0, self.cost - 1.0) * weight * min(plain_cost, SLOW_TEST_SECONDS)
        return plain_cost + extra

    def allowance(self, now: float, plain_cost: float, shared: bool) -> float:
        """Seconds from ``now`` of concurrent runs for the current test, given its plain cost
        and whether its first concurrent run met shared state; 0: no run after the first."""
        started = now if self.started is None else self.started
        weight = 1.0 if shared else QUIET_SHARE
        if self.budget is None:
            return max(0.0, started + self.earned + self.share(plain_cost, shared) - now)
        left = max(0.0, started + self.budget - now)
        mean = statistics.fmean([*self.weights, weight])
        return left / max(1, self.tests_left) * weight / mean

    def first_run(self, now: float, plain_cost: float) -> float:
        """Seconds from ``now`` the first concurrent run is perturbed and watched (the rest of
        its calls run on unperturbed): what the test may spend, as if it touched shared state,
        and at least :data:`FIRST_RUN_FLOOR` times its plain cost when the audit is in debt
        (a long first run of a test with many shared-state points no longer costs a hundred
        times its plain run)."""
        return max(self.allowance(now, plain_cost, True), FIRST_RUN_FLOOR * plain_cost)

    def charge(self, plain_cost: float, shared: bool) -> None:
        """Count one audited test in: what it earned, one test fewer to come."""
        self.earned += self.share(plain_cost, shared)
        self.weights.append(1.0 if shared else QUIET_SHARE)
        self.tests_left = max(0, self.tests_left - 1)

    def header(self, workers: int) -> str:
        if self.budget is not None:
            return messages.HEADER_AUDIT_BUDGET.format(budget=self.budget, workers=workers)
        return messages.HEADER_AUDIT_COST.format(
            cost=self.cost, quiet=max(1.0, 1 + (self.cost - 1) * QUIET_SHARE), workers=workers
        )


def touches_shared_state(points: int | None, calls: int) -> bool:
    """Did the first run touch shared state? Unknown (None: not counted) counts as yes."""
    return points is None or points >= SHARED_POINTS_PER_CALL * max(1, calls)


def audit_entry(
    *,
    plain: float,
    concurrent: float,
    allowance: float | None,
    points: int | None,
    shared: bool,
) -> AuditEntry:
    return {
        "plain_seconds": round(plain, 6),
        "concurrent_seconds": round(concurrent, 6),
        "allowance_seconds": None if allowance is None else round(allowance, 6),
        "shared_state": shared,
        "shared_points": points,
        "plain_rerun": None,
    }


def raised_inside_plugin(exc: BaseException | None) -> str | None:
    """``file:line`` where the plugin itself raised ``exc`` (its innermost frame is the
    plugin's, and it is none of the plugin's own exceptions meant for the user); else None."""
    if exc is None or type(exc).__module__ == USER_FACING_ERRORS:
        return None
    tb = exc.__traceback__
    innermost = None
    while tb is not None:
        innermost, tb = tb, tb.tb_next
    if innermost is None or not is_plugin_file(innermost.tb_frame.f_code.co_filename):
        return None
    return f"{innermost.tb_frame.f_code.co_filename}:{innermost.tb_lineno}"


def origin_under_test(
    exc: BaseException | None, package_dirs: Sequence[str], test_file: str
) -> str | None:
    """Where a concurrent failure happened inside the packages under test: the innermost
    frame of ``exc``'s traceback that lies in one of ``package_dirs`` (and is not the test
    file), as ``file.py:LINE in function``; None when the failure never entered them."""
    tb = exc.__traceback__ if exc is not None else None
    found = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename != test_file and any(is_below(filename, d) for d in package_dirs):
            found = tb
        tb = tb.tb_next
    if found is None:
        return None
    code = found.tb_frame.f_code
    return f"{os.path.basename(code.co_filename)}:{found.tb_lineno} in {code.co_name}"


def failure_class(exceptions: Iterable[BaseException | None]) -> str:
    """A concurrent failure's class: internal when the plugin itself raised any of them,
    else a failure that shows only concurrently (the plain run, if any, passed)."""
    internal = any(raised_inside_plugin(exc) for exc in exceptions)
    return FAILURE_INTERNAL if internal else FAILURE_CONCURRENT


@dataclass
class ModuleTally:
    """One test module's audit: how many ran concurrently, failed so, and ran once, why."""

    concurrent: int = 0
    races: int = 0
    internal: int = 0
    own: int = 0
    once: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "concurrent": self.concurrent,
            "races": self.races,
            "internal_errors": self.internal,
            "own_failures": self.own,
            "once": sum(self.once.values()),
            "once_reasons": dict(sorted(self.once.items(), key=lambda item: -item[1])),
        }


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def module_tallies(entries: Sequence[Entry]) -> dict[str, ModuleTally]:
    """Per test module, from the session's entries, in the order the modules first ran."""
    tallies: dict[str, ModuleTally] = {}
    for entry in concurrent_entries(entries):
        tally = tallies.setdefault(module_of(entry["nodeid"]), ModuleTally())
        tally.concurrent += 1
        if entry.get("failing_run") is not None:
            kind = entry.get("failure_class")
            if kind == FAILURE_INTERNAL:
                tally.internal += 1
            elif kind == FAILURE_OWN:
                tally.own += 1
            else:
                tally.races += 1
    for once in serial_entries(entries):
        tally = tallies.setdefault(module_of(once["nodeid"]), ModuleTally())
        tally.own += once.get("failure_class") == FAILURE_OWN
        tally.once[once["reason"]] = tally.once.get(once["reason"], 0) + 1
    return tallies


def module_lines(entries: Sequence[Entry]) -> list[str]:
    """The per-module audit report of the terminal summary."""
    tallies = module_tallies(entries)
    if not tallies:
        return []
    lines = [messages.SUMMARY_MODULES_TITLE]
    for module, tally in tallies.items():
        reasons = "; ".join(f"{count} {reason}" for reason, count in tally.once.items())
        lines.append(
            messages.SUMMARY_MODULE_LINE.format(
                module=module,
                concurrent=tally.concurrent,
                races=tally.races,
                internal=f", {tally.internal} internal errors" if tally.internal else "",
                once=sum(tally.once.values()),
                reasons=f" ({reasons})" if reasons else "",
            )
        )
    return lines


def cost_lines(concurrent: Sequence[ConcurrentEntry]) -> list[str]:
    """What the audit cost and how it was spread, for the terminal summary."""
    audited = [entry["audit"] for entry in concurrent if "audit" in entry]
    if not audited:
        return []
    runs = [int(e.get("runs_done") or 0) for e in concurrent if "audit" in e]
    plain = sum(a["plain_seconds"] for a in audited)
    spent = sum(a["concurrent_seconds"] for a in audited)
    shared = sum(1 for a in audited if a["shared_state"])
    return [
        messages.SUMMARY_AUDIT_COST.format(
            tests=len(audited),
            shared=shared,
            runs=sum(runs),
            low=min(runs),
            median=statistics.median(runs),
            high=max(runs),
            plain=plain,
            spent=spent,
            multiple=(plain + spent) / plain if plain > 0 else 0.0,
        )
    ]
