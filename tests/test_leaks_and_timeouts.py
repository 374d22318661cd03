"""Acceptance: leftover threads and processes are reported; deadlines fit under pytest-timeout."""

from __future__ import annotations

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
