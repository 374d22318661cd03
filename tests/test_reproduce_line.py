"""The printed reproduction line replays the run that failed, whatever shaped it (issue 14).

Each case fails only under a setting that did not come from the test's code (the command line,
the environment, the ini file, a budget, run-all, shards): the failure depends on the setting,
not on timing, so the line either carries it and fails again or leaves it out and passes. The
line is copied from the report as a user would, and rerun in a fresh interpreter after the
environment variable or the ini file that gave the setting is gone.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

import pytest

REPRODUCE = re.compile(r"^\s*reproduce: (pytest .+)$", re.MULTILINE)
ORIGIN = re.compile(r"\b\w*Error at test_replay\.py:\d+")


@dataclass(frozen=True)
class Case:
    body: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ini: str = ""
    carries: tuple[str, ...] = ()  # what the printed line must hold
    failed: int = 1  # failed tests in the first session
    replay_says: str = "*"  # a line of the replay's report
    keep_ini: bool = False  # the ini file stays (the setting overrides it)


CASES = {
    "threads-environment-workers": Case(
        """
        @pytest.mark.concurrent(runs=2)
        def test_it(concurrency):
            assert concurrency.workers != 3, "three workers"
        """,
        env={"PYTEST_CONCURRENCY_WORKERS": "3"},
        carries=("--concurrency-workers=3",),
    ),
    "processes-command-line-mode": Case(
        """
        import multiprocessing

        @pytest.mark.concurrent(workers=2, runs=2)
        def test_it():
            assert multiprocessing.parent_process() is None, "in a worker process"
        """,
        args=("--concurrency-mode=processes",),
        carries=("--concurrency-mode=processes",),
    ),
    "asyncio-ini-runs": Case(
        """
        @pytest.mark.concurrent(workers=2)
        async def test_it(concurrency):
            assert concurrency.run < 120, "a late run"
        """,
        ini="[pytest]\nconcurrency_runs = 150\n",
        carries=("--concurrency-runs=150",),
    ),
    "threads-command-line-budget": Case(
        """
        @pytest.mark.concurrent(workers=2)
        def test_it(concurrency):
            assert concurrency.run < 110, "a run past the default count"
        """,
        args=("--concurrency-budget=20",),
        carries=("--concurrency-replay-runs=111",),
    ),
    "command-line-default-over-ini": Case(
        """
        import multiprocessing

        @pytest.mark.concurrent(workers=2, runs=2)
        def test_it():
            assert multiprocessing.parent_process() is not None, "not in a worker process"
        """,
        ini="[pytest]\nconcurrency_mode = processes\n",
        args=("--concurrency-mode=threads",),
        carries=("--concurrency-mode=threads",),
        keep_ini=True,
    ),
    "threads-marker-budget": Case(
        """
        @pytest.mark.concurrent(workers=2, budget=20)
        def test_it(concurrency):
            assert concurrency.run < 110, "a run past the default count"
        """,
        carries=("--concurrency-replay-runs=111",),
        replay_says="*in run 110 of 111 (2 threads, *",
    ),
    "harness-command-line-runs": Case(
        """
        def test_it(concurrency):
            def call():
                assert concurrency.run < 120, "a late run"
            for run in concurrency.runs():
                run(call, workers=2)
        """,
        args=("--concurrency-runs=150",),
        carries=("--concurrency-runs=150",),
    ),
    "run-all": Case(
        """
        import threading

        def test_it():
            assert threading.current_thread() is threading.main_thread(), "in a worker"
        """,
        args=("--concurrency-all", "--concurrency-runs=2"),
        carries=("--concurrency-all",),
    ),
    "shards-environment": Case(
        """
        @pytest.mark.concurrent(workers=2, runs=4)
        def test_it(concurrency):
            assert concurrency.run < 1, "the second run of a shard"
        """,
        env={"PYTEST_CONCURRENCY_SHARDS": "2"},
        carries=("--concurrency-shards=2",),
        failed=2,
    ),
    "scheduler-environment": Case(
        """
        class Counter:
            n = 0

        @pytest.mark.concurrent(workers=2, runs=50)
        def test_it(concurrency):
            concurrency.barrier()
            for _ in range(5):
                value = Counter.n
                Counter.n = value + 1
            concurrency.barrier()
            assert Counter.n % 10 == 0, "a lost update"
            concurrency.barrier()
        """,
        env={"PYTEST_CONCURRENCY_SCHEDULE": "random"},
        carries=("--concurrency-schedule=random",),
    ),
}


def printed_line(result: pytest.RunResult) -> str:
    found = REPRODUCE.findall(result.stdout.str())
    assert found, result.stdout.str()
    return found[-1]


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_printed_line_fails_again_without_the_source_of_its_settings(
    pytester: pytest.Pytester, run_subprocess, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    case = CASES[name]
    pytester.makepyfile(test_replay="import pytest\n" + _dedent(case.body))
    if case.ini:
        pytester.makefile(".ini", pytest=case.ini)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    first = run_subprocess(*case.args, timeout=180)
    first.assert_outcomes(failed=case.failed)
    origin = ORIGIN.search(first.stdout.str())
    assert origin is not None, first.stdout.str()
    line = printed_line(first)
    command = shlex.split(line)
    assert command[0] == "pytest"
    for option in case.carries:
        assert option in command, line
    for key in case.env:  # a fresh shell: only the line itself
        monkeypatch.delenv(key)
    if case.ini and not case.keep_ini:
        (pytester.path / "pytest.ini").unlink()
    again = run_subprocess(*command[1:], timeout=180)
    again.assert_outcomes(failed=1)
    assert origin.group(0) in again.stdout.str()
    again.stdout.fnmatch_lines([case.replay_says])
    assert printed_line(again) == line or "--concurrency-replay-runs" in line


def _dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text)
