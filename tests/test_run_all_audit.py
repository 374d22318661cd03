"""--concurrency-all's affordable default (issue 17): each test once plainly, then concurrent
runs within its share of the audit's cost; every failure classified; a per-module report."""

from __future__ import annotations

import json

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.audit import (
    FAILURE_CONCURRENT,
    FAILURE_INTERNAL,
    FAILURE_OWN,
    FIRST_RUN_FLOOR,
    QUIET_SHARE,
    SLOW_TEST_SECONDS,
    AuditLedger,
    module_tallies,
    touches_shared_state,
)
from pytest_concurrency.engine.settings import SessionOptions, resolve_session_options
from pytest_concurrency.errors import SettingsError

SUITE = """
import threading
import pytest

STORE = {}

def put(key, value):
    STORE[key] = value
    return STORE.get(key)

def test_calls_into_shared_state():
    for index in range(20):
        put(index, index)

def test_quiet():
    assert 1 + 1 == 2

@pytest.mark.concurrent(runs=7, workers=2)
def test_marked_keeps_its_runs():
    put("marked", 1)
"""


def load(pytester: pytest.Pytester, name: str = "report.json") -> dict:
    return json.loads((pytester.path / name).read_text())


def by_nodeid(document: dict) -> dict[str, dict]:
    return {entry["nodeid"].split("::")[-1]: entry for entry in document["tests"]}


def test_the_audit_runs_each_test_within_its_allowance(pytester, run) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run("--concurrency-all", "--concurrency-seed=3", "--concurrency-json=report.json")
    result.assert_outcomes(passed=3)
    header = messages.HEADER_AUDIT_COST.format(cost=8, quiet=1 + 7 * QUIET_SHARE, workers=2)
    result.stdout.fnmatch_lines([header, "audit: 2 tests audited (* touched shared state)*"])
    defaults = messages.HEADER_DEFAULTS_AUDIT_COST.format(workers=2, cost=8)
    result.stdout.fnmatch_lines([f"concurrency: seed *; defaults: threads, {defaults}, *"])
    assert " runs, perturbation" not in result.stdout.str()  # not the marker's count of runs
    tests = by_nodeid(load(pytester))
    for name in ("test_calls_into_shared_state", "test_quiet"):
        entry = tests[name]
        assert entry["runs_done"] >= 1  # never zero
        assert entry["runs_planned"] is None  # an allowance of seconds, not a count
        assert entry["audit"]["plain_seconds"] > 0
        assert entry["workers"] == 2  # the audit's count, unless --concurrency-workers is given
        assert "--concurrency-workers=2" in (entry["reproduce"] or "--concurrency-workers=2")
        assert entry["audit"]["allowance_seconds"] is not None or entry["runs_done"] == 1
    assert tests["test_calls_into_shared_state"]["audit"]["shared_state"] is True
    assert tests["test_quiet"]["audit"]["shared_state"] is False
    marked = tests["test_marked_keeps_its_runs"]
    assert (marked["runs_done"], marked["workers"]) == (7, 2)  # its marker's semantics
    assert "audit" not in marked


def test_a_session_budget_is_spread_and_never_leaves_a_test_without_a_run(pytester, run) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run(
        "--concurrency-all", "--concurrency-budget=0.000001", "--concurrency-json=report.json"
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([messages.HEADER_AUDIT_BUDGET.format(budget=0.000001, workers=2)])
    defaults = messages.HEADER_DEFAULTS_AUDIT_BUDGET.format(workers=2, budget=0.000001)
    result.stdout.fnmatch_lines([f"concurrency: seed *; defaults: threads, {defaults}, *"])
    tests = by_nodeid(load(pytester))
    for name in ("test_calls_into_shared_state", "test_quiet"):
        assert tests[name]["runs_done"] == 1  # the first concurrent run always
    assert load(pytester)["audit"]["budget"] == 0.000001


def test_a_given_run_count_keeps_the_long_hunt(pytester, run) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run("--concurrency-all", "--concurrency-runs=5", "--concurrency-json=report.json")
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*audit: each test once plainly*")
    tests = by_nodeid(load(pytester))
    assert tests["test_quiet"]["runs_done"] == 5
    assert "audit" not in tests["test_quiet"]


CLASSES = """
import threading
from pytest_concurrency.engine.owncode import is_below

def test_fails_on_its_own():
    assert 1 == 2

def test_fails_only_in_workers():
    assert threading.current_thread() is threading.main_thread()

def test_plugin_raises_in_workers():
    if threading.current_thread() is not threading.main_thread():
        is_below(None, "a bug inside the plugin, simulated")

def test_fails_inside_the_code_under_test():
    import lib
    lib.main_thread_only()

def test_passes():
    pass
"""
LIB = """
import threading

def main_thread_only():
    assert threading.current_thread() is threading.main_thread(), "not thread-safe"
"""


def test_every_failure_is_classified(pytester, run) -> None:
    pytester.makepyfile(test_classes=CLASSES, lib=LIB)
    result = run("--concurrency-all", "--concurrency-seed=1", "--concurrency-json=report.json")
    result.assert_outcomes(passed=1, failed=4)
    result.stdout.fnmatch_lines(
        [
            "*" + messages.OWN_FAILURE_NOTE,
            "*" + messages.CONCURRENT_FAILURE_NOTE.strip(),
            "*" + messages.INTERNAL_FAILURE_NOTE.strip().split("{")[0] + "*",
        ],
        consecutive=False,
    )
    document = load(pytester)
    tests = by_nodeid(document)
    assert tests["test_fails_only_in_workers"]["failure_class"] == FAILURE_CONCURRENT
    assert tests["test_fails_only_in_workers"]["under_test"] == []
    inside = tests["test_fails_inside_the_code_under_test"]
    assert inside["failure_class"] == FAILURE_CONCURRENT
    assert inside["under_test"] == ["lib.py:4 in main_thread_only"]
    result.stdout.fnmatch_lines(
        ["*" + messages.UNDER_TEST_NOTE.format(where="lib.py:4 in main_thread_only").strip()]
    )
    result.stdout.fnmatch_lines(["*" + messages.OUTSIDE_UNDER_TEST_NOTE.strip()])
    assert tests["test_plugin_raises_in_workers"]["failure_class"] == FAILURE_INTERNAL
    assert "failure_class" not in tests["test_passes"]
    (own,) = document["serial"]
    assert own["reason"] == messages.SERIAL_FAILED_PLAIN
    assert own["failure_class"] == FAILURE_OWN
    module = document["audit"]["modules"]["test_classes.py"]
    assert module["concurrent"] == 4
    assert module["races"] == 2
    assert module["internal_errors"] == 1
    assert module["own_failures"] == 1
    assert module["once_reasons"] == {messages.SERIAL_FAILED_PLAIN: 1}


def test_the_summary_reports_per_module(pytester, run) -> None:
    pytester.makepyfile(
        test_one=SUITE,
        test_two="""
import pytest

def test_uses_monkeypatch(monkeypatch):
    pass

@pytest.mark.not_concurrent(reason="global registry")
def test_marked_once():
    pass
""",
    )
    result = run("--concurrency-all")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        [
            messages.SUMMARY_MODULES_TITLE,
            "  test_one.py: 3 concurrently, 0 with races; 0 once",
            "  test_two.py: 0 concurrently, 0 with races; 2 once (1 *; 1 *)",
        ]
    )


# -- the pure policy -----------------------------------------------------------------------


def test_by_default_a_test_earns_the_cost_times_its_plain_run_less_what_was_spent() -> None:
    ledger = AuditLedger(cost=10)
    ledger.start(100.0)
    # the first test: plain cost 0.5 s, 0.5 s gone by: 10 x 0.5 s earned, 0.5 s spent
    assert ledger.allowance(100.5, 0.5, shared=True) == pytest.approx(4.5)
    quiet = ledger.allowance(100.5, 0.5, shared=False)
    assert quiet == pytest.approx(0.5 * (1 + 9 * QUIET_SHARE) - 0.5)
    ledger.charge(0.5, shared=True)  # it earned 5 s
    # the second test starts at 108 s: 8 s spent, 5 s earned; its own share first pays that
    assert ledger.allowance(108.0, 0.5, shared=True) == pytest.approx(2.0)
    assert ledger.allowance(111.0, 0.5, shared=True) == 0  # overspent: only its first run
    assert AuditLedger(cost=1).allowance(0.0, 0.5, shared=True) == pytest.approx(0.5)


def test_the_first_run_is_perturbed_for_what_the_test_may_spend_at_least_its_plain_cost() -> None:
    ledger = AuditLedger(cost=10)
    ledger.start(100.0)
    assert ledger.first_run(100.5, 0.5) == pytest.approx(4.5)  # its share, less what is spent
    assert ledger.first_run(200.0, 0.5) == pytest.approx(FIRST_RUN_FLOOR * 0.5)  # in debt


def test_a_slow_test_earns_on_its_first_second_only() -> None:
    ledger = AuditLedger(cost=8)
    assert ledger.share(0.5, shared=True) == pytest.approx(0.5 * 8)
    assert ledger.share(SLOW_TEST_SECONDS * 10, shared=True) == pytest.approx(
        SLOW_TEST_SECONDS * 10 + 7 * SLOW_TEST_SECONDS
    )


def test_a_session_budget_is_split_over_the_tests_left_shared_ones_getting_more() -> None:
    ledger = AuditLedger(budget=10.0, tests_left=4)
    ledger.start(0.0)
    assert ledger.allowance(0.0, 1.0, shared=True) == pytest.approx(2.5)
    ledger.charge(1.0, shared=True)
    quiet = ledger.allowance(2.5, 1.0, shared=False)
    shared = ledger.allowance(2.5, 1.0, shared=True)
    assert quiet < shared
    assert ledger.allowance(11.0, 1.0, shared=True) == 0  # the budget is spent: never negative


def test_shared_state_is_judged_per_call_and_unknown_counts_as_touched() -> None:
    assert touches_shared_state(None, 0)
    assert touches_shared_state(400, 8)
    assert not touches_shared_state(16, 8)


def test_module_tallies_count_races_internal_errors_and_runs_once() -> None:
    entries = [
        {"kind": "concurrent", "nodeid": "a.py::t1", "failing_run": 3},
        {"kind": "concurrent", "nodeid": "a.py::t2", "failing_run": 0, "failure_class": "internal"},
        {"kind": "concurrent", "nodeid": "a.py::t3", "failing_run": None},
        {"kind": "serial", "nodeid": "b.py::t4", "reason": "uses capsys"},
    ]
    tallies = module_tallies(entries)  # type: ignore[arg-type]
    assert tallies["a.py"].as_json()["races"] == 1
    assert tallies["a.py"].as_json()["internal_errors"] == 1
    assert tallies["b.py"].as_json()["once_reasons"] == {"uses capsys": 1}


def test_the_audit_cost_is_a_session_setting() -> None:
    assert SessionOptions().audit_cost == 8
    options = resolve_session_options(
        cli={"concurrency_audit_cost": "4"},
        env={"PYTEST_CONCURRENCY_AUDIT_COST": "6"},
        ini={"concurrency_audit_cost": "8"},
    )
    assert options.audit_cost == 4
    env_wins = resolve_session_options(
        cli={}, env={"PYTEST_CONCURRENCY_AUDIT_COST": "6"}, ini={"concurrency_audit_cost": "8"}
    )
    assert env_wins.audit_cost == 6
    with pytest.raises(SettingsError, match="at least 1"):
        resolve_session_options(cli={"concurrency_audit_cost": "0.5"}, env={}, ini={})


def test_a_bad_audit_cost_is_a_usage_error(pytester, run) -> None:
    pytester.makepyfile(test_a="def test_a(): pass")
    result = run("--concurrency-all", "--concurrency-audit-cost=zero")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--concurrency-audit-cost=zero*" + "at least 1*"])


NOT_REPEATABLE = """
DONE = []

def test_only_once():
    assert not DONE, "ran before"
    DONE.append(1)
"""


def test_a_test_that_fails_when_run_again_plainly_is_its_own_failure(pytester, run) -> None:
    pytester.makepyfile(test_once=NOT_REPEATABLE)
    result = run("--concurrency-all", "--concurrency-json=report.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*" + messages.NOT_REPEATABLE_NOTE.strip().split(":")[0] + "*"])
    result.stdout.no_fnmatch_line("*RACE DETECTED*")
    (entry,) = load(pytester)["tests"]
    assert entry["failure_class"] == FAILURE_OWN
    assert entry["audit"]["plain_rerun"] == "failed"
    module = load(pytester)["audit"]["modules"]["test_once.py"]
    assert (module["races"], module["own_failures"]) == (0, 1)


LONG_BODY = """
class Counter:
    n = 0


def test_many_shared_state_points():
    counter = Counter()
    for _ in range(10_000):  # some 30,000 shared-state points in each worker's call
        counter.n = counter.n + 1
"""


def test_the_first_run_stops_perturbing_once_the_test_has_spent_its_share(
    pytester, run_subprocess
) -> None:
    """Without the audit's deadline each worker's call would meet its whole budget of
    decision points (MAX_POINTS_PER_CALL): a perturbed and watched point costs far more than
    the plain loop's step, so the plain cost is spent long before."""
    from pytest_concurrency.races.perturb import MAX_POINTS_PER_CALL

    pytester.makepyfile(test_long=LONG_BODY)
    result = run_subprocess(
        "--concurrency-all", "--concurrency-audit-cost=1", "--concurrency-json=report.json"
    )
    result.assert_outcomes(passed=1)
    (entry,) = load(pytester)["tests"]
    assert entry["runs_done"] == 1
    assert 0 < entry["audit"]["shared_points"] < 2 * MAX_POINTS_PER_CALL


XDIST_MODULE = (
    "\n".join(
        f"STORE{i} = {{}}\n\ndef test_{i}():\n    STORE{i}['k'] = STORE{i}.get('k', 0) + 1\n"
        for i in range(4)
    )
    + "\ndef test_unsafe(monkeypatch):\n    monkeypatch.setenv('X', '1')\n"
)


@pytest.mark.parametrize("spread", [(), ("--concurrency-budget=2",)])
def test_under_xdist_every_test_is_audited_and_reported(pytester, run_subprocess, spread) -> None:
    """``-n 2``: each worker audits its share (the budget's tests counted per worker); the
    controller's JSON and per-module report carry every test of both workers."""
    pytester.makepyfile(**{f"test_m{m}": XDIST_MODULE for m in range(3)})
    result = run_subprocess(
        "-n", "2", "--concurrency-all", "--concurrency-json=report.json", *spread
    )  # fmt: skip
    result.assert_outcomes(passed=15)
    document = load(pytester)
    assert len(document["tests"]) == 12
    assert all(entry["runs_done"] >= 1 and "audit" in entry for entry in document["tests"])
    assert len(document["serial"]) == 3
    modules = document["audit"]["modules"]
    assert sorted(modules) == ["test_m0.py", "test_m1.py", "test_m2.py"]
    assert all((tally["concurrent"], tally["once"]) == (4, 1) for tally in modules.values())
    result.stdout.fnmatch_lines(["audit: 12 tests audited (*", "per module:"])
    if spread:
        assert document["audit"]["budget"] == 2
