"""Acceptance: leftover threads, processes and asyncio tasks are reported; deadlines fit under
pytest-timeout."""

from __future__ import annotations

import json
import re

import pytest

from pytest_concurrency import messages

LEAKY = """
import subprocess, sys, threading, time
import pytest

STOP = threading.Event()

@pytest.mark.concurrent(workers=2, runs=2)
def test_leaves_a_thread(concurrency):
    if concurrency.worker == 0 and concurrency.run == 0:
        threading.Thread(target=STOP.wait, args=(20,), name="leaky-thread", daemon=True).start()

def test_leaves_a_process(concurrency):
    test_leaves_a_process.child = subprocess.Popen([sys.executable, "-c",
                                                    "import time; time.sleep(20)"])

@pytest.mark.concurrent(workers=2, runs=2)
def test_clean(concurrency):
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()

def test_zz_cleanup():
    STOP.set()
    test_leaves_a_process.child.kill()
    test_leaves_a_process.child.wait()
"""


def test_leaks_are_warned_by_default(pytester, run_subprocess) -> None:
    pytester.makepyfile(LEAKY)
    result = run_subprocess()
    result.assert_outcomes(passed=4, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*ConcurrencyLeakWarning: *test_leaves_a_thread left 1 thread running after its "
            "teardown: thread 'leaky-thread'*",
            "*ConcurrencyLeakWarning: *test_leaves_a_process left 1 process running*",
            "*leak: *test_leaves_a_thread left 1 thread*",
        ]
    )
    assert "test_clean left" not in result.stdout.str()


def test_leaks_can_fail_the_test(pytester, run_subprocess) -> None:
    pytester.makepyfile(LEAKY)
    result = run_subprocess("--concurrency-leaks=fail")
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaves_a_thread*"])


def test_leak_checks_can_be_off(pytester, run_subprocess) -> None:
    pytester.makepyfile(LEAKY)
    result = run_subprocess("--concurrency-leaks=off")
    result.assert_outcomes(passed=4)
    assert "left 1" not in result.stdout.str()


def test_bad_leaks_value_is_a_usage_error(pytester, run) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run("--concurrency-leaks=loud")
    result.stderr.fnmatch_lines(
        ["*invalid --concurrency-leaks=loud: expected one of warn, fail, off"]
    )


def test_run_deadline_fits_inside_pytest_timeout(pytester, run_subprocess) -> None:
    """With pytest-timeout at 5s, the run is called hung 1s before it (at most 4s after it
    started, less when the setup took time), with the stuck worker's stack, instead of
    pytest-timeout killing the run blind; the 1s left is for the report."""
    pytester.makepyfile(
        """
        import threading
        import pytest

        NEVER = threading.Event()

        @pytest.mark.timeout(5)
        @pytest.mark.concurrent(workers=2, runs=3)
        def test_stuck(concurrency):
            if concurrency.worker == 0:
                NEVER.wait(30)
        """
    )
    result = run_subprocess("-p", "timeout")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*HANG in run 0 of 3 (2 threads, seed *): worker 0 did not finish within *s*",
            "*NEVER.wait(30)*",
        ]
    )
    assert "Timeout" not in result.stdout.str().split("short test summary")[0].split("HANG")[0]


SHORT_TIMEOUT_HANGS = """
import asyncio
import threading
import pytest

NEVER = threading.Event()

@pytest.mark.timeout(2)
@pytest.mark.concurrent(workers=2, runs=3)
def test_threads(concurrency):
    if concurrency.worker == 0:
        NEVER.wait(30)

@pytest.mark.timeout(6)  # starting the pool takes up to 2s on a loaded machine
@pytest.mark.concurrent(workers=2, runs=3, mode="processes")
def test_processes(concurrency):
    if concurrency.worker == 0:
        NEVER.wait(30)

@pytest.mark.timeout(2)
@pytest.mark.concurrent(workers=2, runs=3)
async def test_asyncio(concurrency):
    if concurrency.worker == 0:
        await asyncio.sleep(30)

@pytest.mark.timeout(2)
def test_harness(concurrency):
    def call():
        if concurrency.worker == 0:
            NEVER.wait(30)
    for run in concurrency.runs(3):
        run(call, workers=2)
"""


def test_a_short_pytest_timeout_still_gets_the_hang_report_with_stacks(
    pytester, run_subprocess
) -> None:
    """pytest-timeout at 2s (6s for processes, whose pool may take 2s to start on a loaded
    machine): the run is called hung a margin before it strikes (1s, 1.5s for processes), so
    the report and the stuck worker's stack come first, and pytest-timeout never fires in the
    plugin's or pytest's report code."""
    pytester.makepyfile(SHORT_TIMEOUT_HANGS)
    result = run_subprocess("-p", "timeout")
    result.assert_outcomes(failed=4)
    for unit in ("threads", "processes", "tasks"):
        result.stdout.fnmatch_lines(
            [f"*HANG in run 0 of 3 (2 {unit}, seed *): worker 0 did not finish within *s"]
        )
    text = result.stdout.str()
    assert text.count("NEVER.wait(30)") >= 3 and "asyncio.sleep(30)" in text
    assert "from pytest-timeout" not in text
    assert "INTERNALERROR" not in text + result.stderr.str()


HEALTHY_UNDER_PYTEST_TIMEOUT = """
import asyncio
import time
import pytest

@pytest.fixture
def slow_setup():
    time.sleep(2)  # not counted with func_only

@pytest.mark.timeout(6)
@pytest.mark.concurrent(workers=2, runs=5)
def test_long_runs_that_fit(concurrency):
    time.sleep(1.0)  # 5s in all: the last run ends after the hang time (5s), it is not hung

@pytest.mark.timeout(6)
@pytest.mark.concurrent(workers=2, runs=5)
async def test_long_tasks_that_fit(concurrency):
    await asyncio.sleep(1.0)

@pytest.mark.timeout(4, func_only=True)
@pytest.mark.concurrent(workers=2, runs=3)
def test_func_only_counts_from_the_call(slow_setup, concurrency):
    time.sleep(0.5)
"""


def test_healthy_runs_under_pytest_timeout_pass_as_without_the_plugin(
    pytester, run_subprocess
) -> None:
    """Only a run expected to be long over by the hang time is held to it; with func_only the
    deadline counts from the call, as pytest-timeout's does."""
    pytester.makepyfile(HEALTHY_UNDER_PYTEST_TIMEOUT)
    result = run_subprocess("-p", "timeout")
    result.assert_outcomes(passed=3)


def test_a_timeout_from_the_environment_or_func_only_still_gets_the_hang_report(
    pytester, run_subprocess, monkeypatch
) -> None:
    pytester.makepyfile(
        """
        import threading
        import time
        import pytest

        NEVER = threading.Event()

        @pytest.fixture
        def slow_setup():
            time.sleep(2)

        @pytest.mark.concurrent(workers=2, runs=3)
        def test_env(concurrency):
            if concurrency.worker == 0:
                NEVER.wait(30)

        @pytest.mark.timeout(3, func_only=True)
        @pytest.mark.concurrent(workers=2, runs=3)
        def test_func_only(slow_setup, concurrency):
            if concurrency.worker == 0:
                NEVER.wait(30)
        """
    )
    monkeypatch.setenv("PYTEST_TIMEOUT", "3")
    result = run_subprocess("-p", "timeout")
    result.assert_outcomes(failed=2)
    assert result.stdout.str().count("HANG in run 0 of 3 (2 threads") == 2
    assert "from pytest-timeout" not in result.stdout.str()


CUT_BY_PYTEST_TIMEOUT = """
import asyncio
import time
import pytest

@pytest.mark.timeout(1, method="signal")
@pytest.mark.concurrent(workers=2, runs=100_000)
def test_threads():
    time.sleep(0.002)

@pytest.mark.timeout(2, method="signal")
@pytest.mark.concurrent(workers=2, runs=100_000, mode="processes")
def test_processes():
    time.sleep(0.002)

@pytest.mark.timeout(1, method="signal")
@pytest.mark.concurrent(workers=2, runs=100_000)
async def test_asyncio():
    await asyncio.sleep(0.002)

@pytest.mark.timeout(1, method="signal")
def test_harness(concurrency):
    for run in concurrency.runs(100_000):
        run(lambda: time.sleep(0.002), workers=2)

@pytest.mark.timeout(1, method="signal")
def test_harness_checks(concurrency):
    for run in concurrency.runs(100_000):
        run(lambda: None, workers=2)
        time.sleep(0.01)  # the check between runs, where the timeout most likely lands

@pytest.mark.timeout(1, method="signal")
async def test_async_harness(concurrency):
    for run in concurrency.runs(100_000, mode="asyncio"):
        await run(lambda: asyncio.sleep(0.002), workers=2)
"""


def test_pytest_timeout_ending_healthy_runs_is_its_failure_and_the_runs_are_kept(
    pytester, run_subprocess
) -> None:
    """pytest-timeout ends a long series of runs that are all fine: the failure shows no
    plugin or standard-library frames, no task is blamed as a leak, and the summary, the
    JSON report and the JUnit verdict keep the test with what cut it short."""
    test_file = pytester.makepyfile(CUT_BY_PYTEST_TIMEOUT)
    result = run_subprocess("-p", "timeout", "--concurrency-json=out.json", "--junitxml=j.xml")
    result.assert_outcomes(failed=6)
    failures = result.stdout.str().split("= concurrency =")[0]
    assert failures.count("All traceback entries are hidden") == 4  # marker, async harness
    located = re.findall(r"^(\S+\.py):\d+: Failed", failures, re.MULTILINE)
    assert located == [test_file.name] * 2  # sync harness: the test's line, nothing below
    assert "leak" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        ["6 concurrent tests, * runs, * calls; 0 with failures, 6 interrupted"]
    )
    for name, mode, seconds in [
        ("test_threads", "threads", 1),
        ("test_processes", "processes", 2),
        ("test_asyncio", "asyncio", 1),
        ("test_harness", "threads", 1),
        ("test_harness_checks", "threads", 1),
        ("test_async_harness", "asyncio", 1),
    ]:
        result.stdout.fnmatch_lines(
            [
                f"  *::{name}: interrupted after * runs ({mode}, 2 workers): "
                f"Failed: Timeout (>{seconds}.0s) from pytest-timeout."
            ]
        )
    assert "the check after the run failed" not in result.stdout.str()
    entries = json.loads((pytester.path / "out.json").read_text())["tests"]
    assert [entry["interrupted"].startswith("Failed: Timeout") for entry in entries] == [True] * 6
    assert all(entry["failing_run"] is None for entry in entries)
    verdicts = re.findall(
        r'name="concurrency_verdict" value="([^"]+)"', (pytester.path / "j.xml").read_text()
    )
    assert verdicts == ["interrupted"] * 6


LEAKY_TASKS = """
import asyncio
import pytest

async def poll_forever():
    while True:
        await asyncio.sleep(0.01)

@pytest.mark.concurrent(workers=2, runs=2)
async def test_leaves_a_task(concurrency):
    if concurrency.worker == 0 and concurrency.run == 0:
        asyncio.get_running_loop().create_task(poll_forever(), name="poller")

async def test_harness_leaves_a_task(concurrency):
    asyncio.get_running_loop().create_task(poll_forever(), name="harness-poller")
    for run in concurrency.runs(2):
        await run(lambda: asyncio.sleep(0), workers=2)

@pytest.mark.concurrent(workers=2, runs=2)
async def test_awaits_its_tasks(concurrency):
    await asyncio.get_running_loop().create_task(asyncio.sleep(0))
"""


@pytest.mark.parametrize("mode", ["warn", "fail", "off"])
def test_leftover_asyncio_tasks_are_reported(pytester, run_subprocess, mode: str) -> None:
    """Tasks still pending when the plugin's event loop closes were started by the test and
    never awaited or cancelled: a leak, like a thread (the loop then cancels them)."""
    pytester.makepyfile(LEAKY_TASKS)
    result = run_subprocess(f"--concurrency-leaks={mode}")
    expected = [
        messages.LEAK_MESSAGE.format(
            nodeid=f"test_leftover_asyncio_tasks_are_reported.py::{name}",
            what="1 asyncio task",
            names=f"task {task!r} (poll_forever at test_leftover_asyncio_tasks_are_reported.py:6)",
        )
        for name, task in (
            ("test_leaves_a_task", "poller"),
            ("test_harness_leaves_a_task", "harness-poller"),
        )
    ]
    text = " ".join(result.stdout.str().split())
    if mode == "off":
        result.assert_outcomes(passed=3)
        assert "left 1" not in text
        return
    if mode == "warn":
        result.assert_outcomes(passed=3, warnings=2)
    else:
        result.assert_outcomes(passed=3, errors=2)
    for message in expected:
        assert message in text
    assert "test_awaits_its_tasks left" not in text
