"""--concurrency-budget stresses for a time instead of a count; long runs show live progress."""

from __future__ import annotations

import json

from pytest_concurrency.driver.progress import LiveProgress
from pytest_concurrency.engine.outcomes import RunRecord, SeriesOutcome


def test_budget_replaces_the_run_count(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=2, runs=3)
        def test_marked(concurrency):
            pass

        def test_harness(concurrency):
            for run in concurrency.runs(3):
                run(lambda: None, workers=2)
        """
    )
    out = pytester.path / "r.json"
    result = run("--concurrency-budget=0.5", f"--concurrency-json={out}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*defaults: threads, 4 workers, 0.5s budget*"])
    for entry in json.loads(out.read_text())["tests"]:
        assert entry["runs_planned"] is None
        assert entry["budget"] == 0.5
        assert entry["runs_done"] > 3, entry  # kept going past runs=3 until the budget ran out


def test_budget_failure_names_the_budget(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=2)
        def test_late(concurrency):
            assert concurrency.run < 20
        """
    )
    result = run("--concurrency-budget=30")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*in run 20 of a 30s budget (2 threads, seed *)*",
            "1 concurrent tests, 21 runs, 42 calls; 1 with failures",  # stopped at the failure
        ]
    )


def test_marker_budget(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=2, budget=0.3)
        def test_budgeted(concurrency):
            pass
        """
    )
    out = pytester.path / "r.json"
    run(f"--concurrency-json={out}").assert_outcomes(passed=1)
    assert json.loads(out.read_text())["tests"][0]["budget"] == 0.3


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_silent_for_short_series_then_throttled() -> None:
    clock = FakeClock()
    lines: list[tuple[str, bool, bool]] = []
    outcome = SeriesOutcome(mode="threads", workers=2, runs_planned=100, seed=1)
    progress = LiveProgress(
        lambda line, first, last: lines.append((line, first, last)),
        label="test_x",
        outcome=outcome,
        deadline=None,
        clock=clock,
    )
    record = RunRecord(index=0, seed=0, workers=2)
    for _ in range(10):
        clock.now += 0.05
        outcome.runs_done += 1
        progress.update(record)
    assert lines == []  # under the one-second delay
    clock.now += 1.0
    outcome.runs_done = 50
    outcome.calls = 100
    progress.update(record)
    progress.update(record)  # throttled: same instant
    assert len(lines) == 1
    line, first, last = lines[0]
    assert (first, last) == (True, False)
    assert line.startswith("concurrency test_x: 50 runs, 100 calls, no failure 50/100, about ")
    progress.finish()
    assert lines[-1][0].endswith(" - done") and lines[-1][2] is True


def test_progress_counts_down_a_budget() -> None:
    clock = FakeClock()
    lines: list[str] = []
    outcome = SeriesOutcome(mode="threads", workers=2, runs_planned=None, seed=1, budget=10)
    progress = LiveProgress(
        lambda line, first, last: lines.append(line),
        label="t",
        outcome=outcome,
        deadline=clock.now + 10,
        clock=clock,
    )
    clock.now += 4
    progress.update(RunRecord(index=0, seed=0, workers=2))
    assert lines[-1].endswith("no failure 6s left")
