"""Acceptance: leftover threads, processes and asyncio tasks are reported; deadlines fit under
pytest-timeout."""

from __future__ import annotations

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
    result.stderr.fnmatch_lines(["*invalid --concurrency-leaks=loud: expected one of warn, fail, off"])


def test_run_deadline_fits_inside_pytest_timeout(pytester, run_subprocess) -> None:
    """With pytest-timeout at 2s, our per-run deadline (80% of it) reports the hang first,
    with the stuck worker's stack, instead of pytest-timeout killing the run blind."""
    pytester.makepyfile(
        """
        import threading
        import pytest

        NEVER = threading.Event()

        @pytest.mark.timeout(2)
        @pytest.mark.concurrent(workers=2, runs=3)
        def test_stuck(concurrency):
            if concurrency.worker == 0:
                NEVER.wait(30)
        """
    )
    result = run_subprocess("-p", "timeout")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*HANG in run 0 of 3 (2 threads, seed *): worker 0 did not finish within 1.6s*",
         "*NEVER.wait(30)*"]
    )
    assert "Timeout" not in result.stdout.str().split("short test summary")[0].split("HANG")[0]


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
            what="1 asyncio task", names=f"task {task!r} (poll_forever at "
            "test_leftover_asyncio_tasks_are_reported.py:6)")
        for name, task in (("test_leaves_a_task", "poller"),
                           ("test_harness_leaves_a_task", "harness-poller"))
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
