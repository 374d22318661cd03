"""What the plugin costs a test that does not use it: no per-test hooks, no machinery imported;
and the thread runner's own contract around counting runs (its speed is measured by
benchmarks/harness_overhead.py and benchmarks/unmarked_suite.py, not here)."""

from __future__ import annotations

import ast

import pytest

from pytest_concurrency.engine.outcomes import RunRecord
from pytest_concurrency.runners.base import RunPlan, Series
from pytest_concurrency.runners.threads import ThreadRunner

MACHINERY = (
    "pytest_concurrency.driver.harness",
    "pytest_concurrency.runners",
    "pytest_concurrency.races.perturb",
    "pytest_concurrency.engine.leaks",
    "pytest_concurrency.driver.series",
    "pytest_concurrency.engine.outcomes",
    "pytest_concurrency.plugin.lockwatch",
    "pytest_concurrency.races.originals",
    "pytest_concurrency.races.tracker",
    "pytest_concurrency.races.tracked",
    "pytest_concurrency.races.primitives",
    "pytest_concurrency.races.runstate",
    "pytest_concurrency.races.runreport",
    "pytest_concurrency.races.scheduler",
    "pytest_concurrency.runners.processes",
    "multiprocessing",
)
WITNESS_CONFTEST = f"""
import sys

MACHINERY = {MACHINERY!r}


def pytest_sessionfinish(session):
    manager = session.config.pluginmanager
    seen = {{
        "item_hooks": manager.has_plugin("concurrency-item-hooks"),
        "lockwatch": manager.has_plugin("concurrency-lockwatch"),
        "imported": sorted(name for name in MACHINERY if name in sys.modules),
    }}
    with open("witness.txt", "w") as out:
        out.write(repr(seen))
"""
UNMARKED = """
def test_one():
    assert 1 == 1


class TestSome:
    def test_two(self):
        assert 2 == 2
"""


def witness(pytester: pytest.Pytester) -> dict[str, object]:
    seen = ast.literal_eval((pytester.path / "witness.txt").read_text())
    assert isinstance(seen, dict)
    return seen


@pytest.mark.parametrize("header", [True, False], ids=["header", "quiet"])
def test_an_unmarked_suite_gets_no_per_test_hooks_and_imports_no_machinery(
    pytester: pytest.Pytester, run_subprocess, header: bool
) -> None:
    pytester.makeconftest(WITNESS_CONFTEST)
    pytester.makepyfile(UNMARKED)
    result = run_subprocess() if header else run_subprocess("-q")
    result.assert_outcomes(passed=2)
    if header:
        result.stdout.fnmatch_lines(["concurrency: processes start with *"])
    assert "= concurrency =" not in result.stdout.str()
    assert witness(pytester) == {"item_hooks": False, "lockwatch": False, "imported": []}


@pytest.mark.parametrize(
    "test",
    [
        "@pytest.mark.concurrent(workers=2, runs=2)\ndef test_marked():\n    pass\n",
        "def test_fixture(concurrency):\n"
        "    for run in concurrency.runs(2):\n"
        "        run(lambda: None, workers=2)\n",
        # rounds=1, a bad value: the per-test hooks say so; force=True, or a tracer (the
        # suite's coverage run) would skip the test before the hooks look at the value
        "@pytest.mark.scaling(rounds=1, force=True)\ndef test_scaling_marker():\n    pass\n",
        "@pytest.mark.concurrent(workers=2, runs=2)\n"
        "class TestMarked:\n    def test_in_class(self):\n        pass\n",
        "pytestmark = pytest.mark.concurrent(workers=2, runs=2)\n",
    ],
    ids=[
        "concurrent-marker",
        "concurrency-fixture",
        "scaling-marker",
        "class-marker",
        "module-marker",
    ],
)
def test_a_test_that_needs_them_gets_the_per_test_hooks(
    pytester: pytest.Pytester, run_subprocess, test: str
) -> None:
    pytester.makeconftest(WITNESS_CONFTEST)
    pytester.makepyfile(UNMARKED + "\n\nimport pytest\n\n\n" + test)
    result = run_subprocess()
    if "scaling" in test:
        result.assert_outcomes(passed=2, failed=1)
        result.stdout.fnmatch_lines(["*scaling: rounds=1 is not usable*"])
    else:
        result.assert_outcomes(passed=3 if "def " in test else 2)
        result.stdout.fnmatch_lines(["*= concurrency =*", "*concurrent tests, * runs*"])
    seen = witness(pytester)
    assert seen["item_hooks"] is True and seen["lockwatch"] is True


def test_concurrency_all_gets_them_for_an_unmarked_suite(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makeconftest(WITNESS_CONFTEST)
    pytester.makepyfile(UNMARKED)
    result = run_subprocess("--concurrency-all", "--concurrency-runs=2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*2 concurrent tests, 4 runs*"])
    assert witness(pytester)["item_hooks"] is True


def series_of(calls: int, count: int, go_on_until: int, seen: list[RunRecord]) -> Series:
    def on_run_done(record: RunRecord) -> bool:
        seen.append(record)
        return record.index < go_on_until

    return Series(
        calls=[lambda: None] * calls,
        plan=RunPlan(count=count),
        seed=3,
        timeout=30,
        on_run_done=on_run_done,
    )


def test_a_clean_run_is_counted_while_the_next_one_runs_and_a_stop_still_stops() -> None:
    """The thread runner starts the next run before it reports a clean one; when the report
    says stop, at most that one more run is made, and the series still ends."""
    seen: list[RunRecord] = []
    runner = ThreadRunner(3)
    try:
        runner.run_series(series_of(3, count=100, go_on_until=4, seen=seen))
        assert [record.index for record in seen] == [0, 1, 2, 3, 4, 5]
        assert len({record.seed for record in seen}) == 6
        seen.clear()
        runner.run_series(series_of(3, count=3, go_on_until=100, seen=seen))  # pool reused
        assert [record.index for record in seen] == [0, 1, 2]
    finally:
        runner.close()
    assert runner.abandoned_threads == []
