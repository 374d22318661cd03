"""Issue 16: a ``concurrency.runs()`` loop claims its ``sys.monitoring`` tool once.

Claiming a tool and setting its events stops the world on a free-threaded build; done per run,
it made each harness run cost 15-20 times more there than with ``PYTHON_GIL=1``. The loop now
keeps the machinery from its first run to its end and frees it exactly once, however the loop
ends. These tests count the claims through a stand-in for ``sys.monitoring``: the real module
wrapped on 3.12+, a table of tools that fires no event on older builds (so the path is tested on
every interpreter CI has).
"""

from __future__ import annotations

import inspect
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency.driver.harness import Concurrency, HarnessConfig
from pytest_concurrency.driver.series import run_series
from pytest_concurrency.engine.outcomes import SeriesOutcome
from pytest_concurrency.races.perturb import MonitoringPerturbation
from pytest_concurrency.runners.base import Runner, RunPlan
from pytest_concurrency.runners.threads import ThreadRunner

HERE = Path(__file__).resolve().parent
WORKERS = 3
RUNS = 12


class CountingMonitoring:
    """``sys.monitoring`` as the perturbation sees it, counting claims and frees of tools."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.claims: list[int] = []
        self.frees: list[int] = []
        self.event_sets = 0
        self.tools: dict[int, str] = {}  # the stand-in's table when there is no real module
        if real is None:
            names = ("PY_START", "PY_RESUME", "INSTRUCTION")
            flags = {name: 1 << bit for bit, name in enumerate(names)}
            self.events = types.SimpleNamespace(NO_EVENTS=0, **flags)
            self.DISABLE = object()

    def __getattr__(self, name: str) -> Any:
        if self.real is None:
            return lambda *args: None  # register_callback, set_local_events, restart_events
        return getattr(self.real, name)

    def get_tool(self, tool_id: int) -> str | None:
        if self.real is None:
            return self.tools.get(tool_id)
        return self.real.get_tool(tool_id)  # type: ignore[no-any-return]

    def use_tool_id(self, tool_id: int, name: str) -> None:
        self.claims.append(tool_id)
        if self.real is None:
            self.tools[tool_id] = name
        else:
            self.real.use_tool_id(tool_id, name)

    def set_events(self, tool_id: int, events: int) -> None:
        self.event_sets += 1
        if self.real is not None:
            self.real.set_events(tool_id, events)

    def free_tool_id(self, tool_id: int) -> None:
        self.frees.append(tool_id)
        if self.real is None:
            self.tools.pop(tool_id, None)
        else:
            self.real.free_tool_id(tool_id)

    def claimed(self) -> list[int]:
        """The tool ids still claimed under our name."""
        return [i for i in range(6) if self.get_tool(i) == "pytest-concurrency"]


@pytest.fixture
def monitoring(monkeypatch: pytest.MonkeyPatch) -> CountingMonitoring:
    counting = CountingMonitoring(getattr(sys, "monitoring", None))
    monkeypatch.setattr(sys, "monitoring", counting, raising=False)
    return counting


def perturbed_factory(runners: list[Runner]) -> Callable[..., Runner]:
    """The fixture's runner factory with the monitoring mechanism on this test file's code."""

    def factory(mode: str, workers: int, *rest: object) -> Runner:
        runner = ThreadRunner(workers, MonitoringPerturbation([HERE], seed=7))
        runners.append(runner)
        return runner

    return factory


def harness(runners: list[Runner]) -> Concurrency:
    config = HarnessConfig(
        mode="threads",
        workers=WORKERS,
        runs=RUNS,
        seed=7,
        timeout=60.0,
        budget=None,
        reproduce="",
        reproduce_seed=7,
    )
    return Concurrency(config, perturbed_factory(runners))


class Box:
    def __init__(self) -> None:
        self.n = 0

    def bump(self) -> None:
        self.n += 1


def loop(concurrency: Concurrency, runs: int = RUNS, stop_at: int | None = None) -> Iterator[int]:
    """A harness loop as a test writes it; yields each finished run's index."""
    for run in concurrency.runs(runs):
        box = Box()
        run(box.bump, workers=WORKERS)
        if run.index == stop_at:
            raise AssertionError("the per-run check failed")
        yield run.index


def test_a_loop_claims_the_tool_once_and_frees_it_once(monitoring: CountingMonitoring) -> None:
    runners: list[Runner] = []
    concurrency = harness(runners)
    try:
        done = list(loop(concurrency))
        assert monitoring.claims and monitoring.claimed() == []  # freed at the loop's end
    finally:
        concurrency.close()
    assert len(done) == RUNS
    assert len(runners) == 1
    assert len(monitoring.claims) == 1
    assert monitoring.frees == monitoring.claims
    assert monitoring.event_sets == 2  # the events once, and NO_EVENTS once at the end
    assert monitoring.claimed() == []


def test_two_loops_claim_once_each(monitoring: CountingMonitoring) -> None:
    concurrency = harness([])
    try:
        list(loop(concurrency))
        list(loop(concurrency, runs=5))
    finally:
        concurrency.close()
    assert len(monitoring.claims) == 2
    assert monitoring.frees == monitoring.claims
    assert monitoring.claimed() == []


@pytest.mark.parametrize("raised", [AssertionError, KeyboardInterrupt])
def test_a_loop_cut_short_frees_the_tool_once(
    monitoring: CountingMonitoring, raised: type[BaseException]
) -> None:
    concurrency = harness([])
    try:
        with pytest.raises(raised):
            for run in concurrency.runs(RUNS):
                run(Box().bump, workers=WORKERS)
                if run.index == 4:
                    raise raised("cut in the middle of the loop")
        assert monitoring.claimed() == []  # the loop's generator was closed with its frame
    finally:
        concurrency.close()
    assert len(monitoring.claims) == 1
    assert monitoring.frees == monitoring.claims


def test_a_loop_left_suspended_is_freed_by_the_fixture_close(
    monitoring: CountingMonitoring,
) -> None:
    concurrency = harness([])
    runs = concurrency.runs(RUNS)  # kept alive: the generator is not closed by the break
    for run in runs:
        run(Box().bump, workers=WORKERS)
        if run.index == 2:
            break
    assert monitoring.claimed() != []  # still held: the loop may go on
    concurrency.close()  # what the fixture's teardown does
    assert monitoring.claimed() == []
    runs.close()
    assert len(monitoring.claims) == 1
    assert monitoring.frees == monitoring.claims


def test_a_series_outside_a_loop_frees_the_tool_at_its_end(
    monitoring: CountingMonitoring,
) -> None:
    """The marker's form: one series of many runs, one claim, freed when the series ends."""
    runner = ThreadRunner(WORKERS, MonitoringPerturbation([HERE], seed=7))
    outcome = SeriesOutcome(mode="threads", workers=WORKERS, runs_planned=RUNS, seed=7)
    try:
        run_series(
            runner,
            [Box().bump] * WORKERS,
            outcome=outcome,
            plan=RunPlan(count=RUNS),
            timeout=60.0,
        )
        assert monitoring.claimed() == []
    finally:
        runner.close()
    assert outcome.runs_done == RUNS
    assert len(monitoring.claims) == 1
    assert monitoring.frees == monitoring.claims


INNER_CONFTEST = """
import sys

from pytest_concurrency.races import perturb

{double}

COUNTING = CountingMonitoring(getattr(sys, "monitoring", None))
sys.monitoring = COUNTING


def _monitoring_perturbation(roots, seed, *, record=False):
    return perturb.MonitoringPerturbation(roots, seed, record=record)


perturb.seeded_perturbation = _monitoring_perturbation  # the mechanism on every build
"""

INNER_TESTS = """
import sys
import threading


class Box:
    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def bump(self):  # locked: with the real sys.monitoring the perturbation finds a bare += 1
        with self.lock:
            self.n += 1


def test_two_loops(concurrency):
    for run in concurrency.runs(10):
        box = Box()
        run(box.bump, workers=3)
        assert box.n == 3
    assert sys.monitoring.claimed() == []
    for run in concurrency.runs(6):
        run(Box().bump, workers=3)


def test_the_tools_were_claimed_once_per_loop():
    counting = sys.monitoring
    assert len(counting.claims) == 2, counting.claims
    assert counting.frees == counting.claims
    assert counting.claimed() == []
"""


def test_through_pytest_each_runs_loop_claims_once(
    pytester: pytest.Pytester, run_subprocess: Callable[..., pytest.RunResult]
) -> None:
    double = textwrap.dedent(inspect.getsource(CountingMonitoring))
    pytester.makeconftest(
        "import types\nfrom typing import Any\n" + INNER_CONFTEST.format(double=double)
    )
    pytester.makepyfile(test_loops=INNER_TESTS)
    result = run_subprocess("-p", "no:randomly", "--concurrency-seed=5")
    result.assert_outcomes(passed=2)
