"""Unit tests for the pure core: settings, seeds, cores, failure grouping and report text."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency.driver.series import failure_exception, run_series, run_series_async
from pytest_concurrency.engine import cores, report, seeds
from pytest_concurrency.engine.outcomes import (
    CallFailure,
    CallKind,
    RunRecord,
    SeriesOutcome,
    classify,
    group_failures,
    origin_of,
)
from pytest_concurrency.engine.settings import (
    SessionOptions,
    Settings,
    auto_workers,
    resolve,
    resolve_session_options,
)
from pytest_concurrency.errors import SettingsError
from pytest_concurrency.runners.base import OuterDeadline, RunPlan, Series

# -- settings ---------------------------------------------------------------------------------


def test_defaults_when_nothing_is_given() -> None:
    assert resolve(cli={}, env={}, ini={}) == Settings()


def test_precedence_cli_env_ini() -> None:
    ini = {"concurrency_workers": "2", "concurrency_runs": "2", "concurrency_mode": "processes"}
    env = {"PYTEST_CONCURRENCY_WORKERS": "3", "PYTEST_CONCURRENCY_RUNS": "3"}
    cli = {"concurrency_workers": "5"}
    settings = resolve(cli=cli, env=env, ini=ini)
    assert (settings.workers, settings.runs, settings.mode) == (5, 3, "processes")
    marked = settings.with_marker({"workers": 7}, "a marker")
    assert (marked.workers, marked.runs) == (7, 3)


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().workers = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"workers": True}, "invalid workers=True"),
        ({"workers": 1.5}, "invalid workers=1.5"),
        ({"workers": 5000}, "from 1 to 4096"),
        ({"runs": -1}, "invalid runs=-1"),
        ({"perturb": "maybe"}, "expected true or false"),
        ({"timeout": 0}, "greater than 0"),
        ({"timeout": float("nan")}, "greater than 0"),
        ({"mode": "proc"}, 'did you mean "processes"'),
        ({"run": 3}, 'Did you mean "runs="'),
    ],
)
def test_marker_errors_name_argument_and_fix(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(SettingsError, match="pytest-concurrency") as info:
        Settings().with_marker(kwargs, "@pytest.mark.concurrent on t.py::test_x")
    assert fragment in str(info.value)


def test_workers_auto_depends_on_mode_and_cores() -> None:
    settings = resolve(cli={"concurrency_workers": "auto"}, env={}, ini={})
    assert settings.workers is None
    assert settings.worker_count(8) == auto_workers("threads", 8) == 16
    assert auto_workers("processes", 8) == 8
    assert auto_workers("processes", 1) == 2
    assert Settings(workers=3).worker_count(64) == 3


def test_bool_and_number_spellings() -> None:
    settings = resolve(
        cli={}, env={"PYTEST_CONCURRENCY_PERTURB": "off", "PYTEST_CONCURRENCY_SEED": "0x10"}, ini={}
    )
    assert settings.perturb is False
    assert settings.seed == 16


def test_session_options_follow_the_same_precedence() -> None:
    assert resolve_session_options(cli={}, env={}, ini={}) == SessionOptions()
    env = {"PYTEST_CONCURRENCY_ALL": "yes", "PYTEST_CONCURRENCY_JSON": "env.json"}
    options = resolve_session_options(
        cli={"concurrency_json": "cli.json"}, env=env, ini={"concurrency_all": False}
    )
    assert options == SessionOptions(run_all=True, json_path="cli.json")
    ini_only = resolve_session_options(cli={}, env={}, ini={"concurrency_all": "true"})
    assert ini_only.run_all is True


def test_a_bad_session_option_names_its_source() -> None:
    with pytest.raises(SettingsError, match="PYTEST_CONCURRENCY_ALL=perhaps"):
        resolve_session_options(cli={}, env={"PYTEST_CONCURRENCY_ALL": "perhaps"}, ini={})


def test_seed_last_is_asked_of_the_cache_from_any_source() -> None:
    for source in ({"cli": {"concurrency_seed": "last"}}, {"ini": {"concurrency_seed": "Last"}}):
        given = {"cli": {}, "env": {}, "ini": {}, **source}
        assert resolve(**given, last_seed=lambda: 42).seed == 42  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="invalid --concurrency-seed=last"):
        resolve(cli={"concurrency_seed": "last"}, env={}, ini={})


# -- seeds ------------------------------------------------------------------------------------


def test_seed_derivation_is_stable_and_distinct() -> None:
    assert seeds.test_seed(1, "a::b") == seeds.test_seed(1, "a::b")
    assert seeds.test_seed(1, "a::b") != seeds.test_seed(2, "a::b")
    assert seeds.test_seed(1, "a::b") != seeds.test_seed(1, "a::c")
    runs = {seeds.run_seed(5, index) for index in range(1000)}
    assert len(runs) == 1000
    # Known value: the derivation must not change between versions, or printed seeds break.
    assert seeds.derive_seed("run", 1, 0) == seeds.derive_seed("run", 1, 0)
    assert 0 <= seeds.new_session_seed() < 2**seeds.SEED_BITS


# -- cores ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000", None),
        ("200000 100000", 2.0),
        ("150000 100000", 1.5),
        ("junk", None),
        ("-1 100000", None),
    ],
)
def test_cgroup_v2_quota(text: str, expected: float | None) -> None:
    assert cores.parse_cgroup_v2_max(text) == expected


def test_cgroup_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cores.cgroup_quota(tmp_path) == 0.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cores.cgroup_quota(v1) == 3.0
    assert cores.cgroup_quota(tmp_path / "missing") is None


def test_core_budget_respects_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores, "affinity_cores", lambda: 8)
    monkeypatch.setattr(cores, "cgroup_quota", lambda root=cores.CGROUP_ROOT: 2.5)
    budget = cores.core_budget()
    assert budget.usable == 3
    assert "cgroup quota 2.5" in budget.describe()


def test_gil_state_on_a_simulated_free_threaded_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert cores.gil_enabled() is False
    assert "GIL disabled" in cores.describe_interpreter()
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    assert cores.gil_enabled() is True


# -- outcomes ---------------------------------------------------------------------------------


def raise_here(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_origin_is_type_and_raising_line() -> None:
    exc = raise_here(ValueError("x"))
    origin = origin_of(exc)
    assert origin.exc_type == "ValueError"
    assert origin.filename == __file__
    assert origin.describe().startswith("ValueError at test_pure_core.py:")


def test_grouping_keeps_every_failure_most_frequent_first() -> None:
    a = [CallFailure.from_exception(raise_here(KeyError(i)), worker=i, run=0) for i in range(3)]
    b = [CallFailure.from_exception(raise_here(ValueError()), worker=9, run=0)]
    groups = group_failures(b + a)
    assert [g.origin.exc_type for g in groups] == ["KeyError", "ValueError"]
    assert groups[0].count == 3 and groups[0].workers == [0, 1, 2]
    assert sum(g.count for g in groups) == 4


def test_classify_outcome_signals() -> None:
    assert classify(raise_here(pytest.skip.Exception("s"))) is CallKind.SKIPPED
    assert classify(raise_here(pytest.xfail.Exception("x"))) is CallKind.XFAILED
    assert classify(raise_here(pytest.fail.Exception("f"))) is CallKind.FAILED
    assert classify(raise_here(KeyboardInterrupt())) is CallKind.INTERRUPTED
    assert classify(raise_here(AssertionError())) is CallKind.FAILED


def test_run_plan_count_and_deadline() -> None:
    plan = RunPlan(count=3, first_index=2)
    assert [plan.has_run(i) for i in range(2, 6)] == [True, True, True, False]
    expired = RunPlan(count=None, deadline=0.0)
    assert expired.has_run(0) and not expired.has_run(1)  # a budget always makes one run
    with pytest.raises(ValueError, match="count or a deadline"):
        RunPlan(count=None)


# -- report text ------------------------------------------------------------------------------


def failed_outcome() -> SeriesOutcome:
    record = RunRecord(index=4, seed=77, workers=3)
    record.failures = [
        CallFailure.from_exception(raise_here(AssertionError("lost update")), worker=w, run=4)
        for w in (0, 2)
    ]
    outcome = SeriesOutcome(
        mode="threads",
        workers=3,
        runs_planned=10,
        seed=5,
        runs_done=5,
        calls=15,
        failing_run=record,
    )
    outcome.observations.add(2)
    outcome.observations.add(2)
    outcome.observations.add(3)
    return outcome


def test_failure_report_text() -> None:
    lines = report.failure_report(
        failed_outcome(), timeout=60, reproduce="pytest t.py::x --concurrency-seed=5", seed=5
    )
    assert lines[0] == "RACE DETECTED in run 4 of 10 (3 threads, seed 5): 2 of 15 calls failed"
    assert lines[1].startswith("  AssertionError at test_pure_core.py:")
    assert lines[1].endswith("(2 calls: workers 0, 2)")
    assert lines[2] == "    lost update"
    assert "  observed outcomes (value: count):" in lines
    assert "    2: 2" in lines
    assert lines[-1] == "  reproduce: pytest t.py::x --concurrency-seed=5"


def test_failure_exception_carries_the_report_as_a_note() -> None:
    exc = failure_exception(failed_outcome(), timeout=60, reproduce="pytest x", seed=5)
    assert isinstance(exc, AssertionError)
    assert "reproduce: pytest x" in exc.__notes__[-1]


def test_reproduce_command_quotes_parametrized_ids() -> None:
    assert report.reproduce_command("t.py::test_a[1 2]", 3) == (
        "pytest 't.py::test_a[1 2]' --concurrency-seed=3"
    )
    assert report.reproduce_command("t.py::test_a", 3) == "pytest t.py::test_a --concurrency-seed=3"


def test_entries_and_json_document() -> None:
    entry = report.concurrent_entry(failed_outcome(), nodeid="t.py::x", reproduce="pytest x")
    assert entry["failing_run"] == 4 and entry["failures"][0]["count"] == 2
    assert entry["observations"] == {"2": 2, "3": 1}
    serial = report.serial_entry("t.py::y", "marked not_concurrent")
    document = report.json_document({"seed": 1}, [entry, serial])
    assert document["tests"] == [entry] and document["serial"] == [serial]
    assert document["scaling"] == []


# -- leaks ------------------------------------------------------------------------------------


def test_the_task_ledger_holds_one_test_at_most() -> None:
    from pytest_concurrency.engine.leaks import TaskLedger

    ledger = TaskLedger()
    ledger.note(["'Task-1' (old)"])
    first = ledger.mark()
    ledger.note(["'Task-2' (poll)", "'Task-3' (feed)"])
    assert ledger.since(first) == ("'Task-2' (poll)", "'Task-3' (feed)")
    second = ledger.mark()
    assert len(ledger) == 0
    assert ledger.since(second) == ()
    ledger.note(["'Task-4' (late)"])
    assert ledger.since(second) == ("'Task-4' (late)",)


# -- driving a series: sync and async share one accounting -------------------------------------


class ScriptedRunner:
    """Makes ``runs`` good runs of one worker, then raises ``exc`` (if any)."""

    mode = "threads"

    def __init__(self, runs: int, exc: BaseException | None = None) -> None:
        self.runs, self.exc = runs, exc

    def run_series(self, series: Series) -> None:
        for index in range(self.runs):
            record = RunRecord(index=index, seed=index, workers=1, results=[index])
            if not series.on_run_done(record):
                return
        if self.exc is not None:
            raise self.exc

    async def run_series_async(self, series: Series) -> None:
        self.run_series(series)

    def close(self) -> None:
        return None


def drive(kind: str, runner: ScriptedRunner, outcome: SeriesOutcome) -> RunRecord | None:
    records: list[RunRecord] = []
    options = {"outcome": outcome, "plan": RunPlan(count=5), "timeout": 1, "keep_results": True}
    if kind == "sync":
        last = run_series(runner, [print], on_record=records.append, **options)
        assert records == ([] if last is None else records[: last.index + 1])
        return last
    return asyncio.run(run_series_async(runner, [print], **options))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_run_series_and_its_async_twin_count_runs_and_keep_interrupts(kind: str) -> None:
    outcome = SeriesOutcome(mode="threads", workers=1, runs_planned=5, seed=1)
    last = drive(kind, ScriptedRunner(3), outcome)
    assert last is not None and last.results == [2]
    assert (outcome.runs_done, outcome.calls, outcome.interrupt) == (3, 3, None)

    for exc in (KeyboardInterrupt(), pytest.fail.Exception("Timeout (>1.0s) from pytest-timeout.")):
        outcome = SeriesOutcome(mode="threads", workers=1, runs_planned=5, seed=1)
        with pytest.raises(type(exc)) as raised:
            drive(kind, ScriptedRunner(2, exc), outcome)
        assert raised.value is exc and outcome.interrupt is exc and outcome.runs_done == 2
        if isinstance(exc, pytest.fail.Exception):  # no frame of the runner's wait is kept
            assert all(hidden(entry) for entry in from_series(raised.traceback))

    error = ValueError("the plugin's own error")
    outcome = SeriesOutcome(mode="threads", workers=1, runs_planned=5, seed=1)
    with pytest.raises(ValueError) as raised:
        drive(kind, ScriptedRunner(1, error), outcome)
    assert raised.value is error and outcome.interrupt is None
    innermost = raised.traceback[-1].frame.code.raw  # raised where it was, traceback intact
    assert innermost is ScriptedRunner.run_series.__code__


def from_series(traceback: list[Any]) -> list[Any]:
    """The entries from the driver's frame inward (asyncio.run's frames are above it)."""
    names = [entry.name for entry in traceback]
    first = min(names.index(name) for name in ("run_series", "run_series_async") if name in names)
    return traceback[first:]


def hidden(entry: Any) -> bool:
    return "__tracebackhide__" in entry.frame.f_locals


def test_an_unknown_mode_has_no_runner() -> None:
    from pytest_concurrency.runners import make_runner

    with pytest.raises(ValueError, match="unknown mode 'fibers'"):
        make_runner("fibers", 2)


def test_exception_text_never_raises_and_names_what_failed() -> None:
    from pytest_concurrency.engine.outcomes import exception_text, first_line

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise KeyError("error")

    assert exception_text(ValueError("plain")) == "plain"
    text = exception_text(Unprintable())
    assert text == "<unprintable Unprintable object: str() raised KeyError: 'error'>"
    assert first_line(Unprintable()) == text


def test_the_reproduction_line_carries_every_session_setting_that_is_not_its_default() -> None:
    session = Settings(
        mode="processes",
        workers=None,
        runs=7,
        timeout=3.5,
        perturb=False,
        start_method="spawn",
        leaks="fail",
        shards=2,
        schedule="pct",
        schedule_depth=5,
        lock_order="warn",
        budget=60.0,
    )
    options = report.replay_options(session, workers=6, run_all=True, replay_runs=None)
    assert options == (
        "--concurrency-mode=processes",
        "--concurrency-workers=6",  # auto, as this machine resolved it
        "--concurrency-runs=7",
        "--concurrency-timeout=3.5",
        "--concurrency-perturb=false",
        "--concurrency-start-method=spawn",
        "--concurrency-leaks=fail",
        "--concurrency-shards=2",
        "--concurrency-schedule=pct",
        "--concurrency-schedule-depth=5",
        "--concurrency-lock-order=warn",
        "--concurrency-all",
    )
    assert report.replay_options(Settings(), workers=4, run_all=False, replay_runs=None) == ()
    line = report.reproduce_command("t.py::test_x[a b]", 12, options)
    assert line.startswith("pytest 't.py::test_x[a b]' --concurrency-seed=12 --concurrency-mode")


def test_a_budget_hunt_is_replayed_as_the_count_that_reaches_its_failing_run() -> None:
    outcome = SeriesOutcome(mode="threads", workers=2, runs_planned=None, seed=1, budget=5.0)
    outcome.failing_run = RunRecord(index=149, seed=3, workers=2)
    line = report.reproduce_for(outcome, "pytest t.py::test_x --concurrency-seed=1")
    assert line.endswith(" --concurrency-replay-runs=150")
    counted = SeriesOutcome(mode="threads", workers=2, runs_planned=100, seed=1)
    counted.failing_run = RunRecord(index=3, seed=3, workers=2)
    assert report.reproduce_for(counted, "pytest x") == "pytest x"
    outcome.failing_run = RunRecord(index=2, seed=3, workers=2)  # found early: more chances
    assert report.reproduce_for(outcome, "pytest x") == "pytest x --concurrency-replay-runs=100"


def test_the_outer_deadline_keeps_a_margin_for_runs_expected_to_end_before_it() -> None:
    threads = OuterDeadline.for_mode(100.0, 5.0, separate_processes=False)
    processes = OuterDeadline.for_mode(100.0, 5.0, separate_processes=True)
    short = OuterDeadline.for_mode(100.0, 1.0, separate_processes=False)
    assert (threads.hang_at, processes.hang_at, short.hang_at) == (99.0, 98.5, 99.5)
    outer = OuterDeadline(100.0, 1.0)
    assert outer.run_deadline(90.0, timeout=30.0) == 99.0  # a hang is reported a margin early
    assert outer.run_deadline(98.9, timeout=30.0) == 128.9  # no time left: pytest-timeout's
    outer.pace.ran(2.0)  # runs take 2s: one started at 96s would end near the hang time
    assert outer.run_deadline(94.0, timeout=30.0) == 99.0
    assert outer.run_deadline(96.0, timeout=30.0) == 126.0  # healthy, not hung: not held to it
    plan = RunPlan(count=3, outer=outer)
    series = Series(calls=[], plan=plan, seed=0, timeout=30.0, on_run_done=lambda r: True)
    series.run_finished(time.monotonic() - 3.0)
    assert outer.pace.longest >= 3.0


def test_the_failing_seed_memory_keeps_failures_forgets_passes_and_drops_junk() -> None:
    from pytest_concurrency.engine import memory

    loaded = memory.load(
        {
            "t.py::kept": {"seed": 5, "run": 2, "session_seed": 9, "reproduce": "pytest x"},
            "t.py::junk": {"seed": "5", "run": 2, "session_seed": 9},
            "t.py::negative": {"seed": 5, "run": -1, "session_seed": 9},
            "t.py::passes": {"seed": 1, "run": 0, "session_seed": 9},
        }
    )
    assert set(loaded) == {"t.py::kept", "t.py::passes"}
    assert loaded["t.py::kept"].runs == 3
    assert memory.load(["not", "a", "mapping"]) == {}
    entries: list[Any] = [
        {"kind": "concurrent", "nodeid": "t.py::new", "seed": 7, "failing_run": 4},
        {"kind": "concurrent", "nodeid": "t.py::passes", "failing_run": None, "outcome": "passed"},
        {"kind": "serial", "nodeid": "t.py::kept", "outcome": "passed"},
    ]
    after = memory.updated(loaded, entries, session_seed=11)
    assert set(after) == {"t.py::kept", "t.py::new"}
    assert after["t.py::new"] == memory.Remembered(seed=7, run=4, session_seed=11)
    assert "t.py::passes" in memory.updated(loaded, entries, session_seed=11, forget=False)
    assert memory.load(memory.dump(after)) == after
