"""The fault suite: inject every fault the plugin must survive, check the report, the exit
status and that no process is left behind.

Each inner pytest runs in a subprocess. Inner test bodies record the pid of every process they
run in (and its parent: the fork server under ``forkserver``), and an inner ``conftest.py``
records every child the inner pytest still has when it unconfigures; after the inner pytest
has exited, every recorded process must be gone. Waits are bounded (a deadline, then the
assertion), never timed: how long the suite takes is measured in benchmarks/README.md
("Reliability").
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from interrupting import interrupt_once_started, start_pytest, wait_for_file

from pytest_concurrency import messages

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to find leftover processes"
)

GONE_SECONDS = 30.0
"""Longest wait for a recorded process to disappear after the inner pytest exited."""
START_SECONDS = 60.0
"""Longest wait for an inner test to start (it touches a file) before it is signalled."""

RECORDER = """
import os, pathlib

PIDS = pathlib.Path(os.environ["FAULT_PIDS"])
MAIN_PID = int(os.environ.setdefault("FAULT_MAIN_PID", str(os.getpid())))  # the inner pytest

def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return "gone"

def record_pid():
    # in a worker process: its pid, and its parent's unless that is pytest (the fork server);
    # in pytest itself (thread mode): nothing
    if os.getpid() == MAIN_PID:
        return
    for pid in {os.getpid(), os.getppid()} - {MAIN_PID}:
        (PIDS / f"{pid}-{start_time(pid)}").touch()
"""

CONFTEST = (
    RECORDER
    + """
def children_now():
    found = set()
    for task in pathlib.Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            found.update(int(pid) for pid in (task / "children").read_text().split())
        except OSError:
            pass
    return found

def pytest_unconfigure(config):
    for pid in children_now():
        (PIDS / f"{pid}-{start_time(pid)}").touch()
"""
)

PREAMBLE = """
import asyncio, ctypes, os, pathlib, signal, threading, time
import pytest
from conftest import PIDS, record_pid
"""


def alive(pid: int, started: str) -> bool:
    """Whether process ``pid`` still runs (a zombie does not) and is the one recorded."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and (started == "gone" or fields[19] == started)


def recorded(directory: Path) -> list[tuple[int, str]]:
    pairs = (path.name.split("-", 1) for path in directory.iterdir())
    return sorted({(int(pid), started) for pid, started in pairs if pid.isdigit()})


def left_running(directory: Path) -> list[int]:
    """The recorded processes still alive once the deadline has passed (none, we hope)."""
    pids = recorded(directory)
    deadline = time.monotonic() + GONE_SECONDS
    running = [pid for pid, started in pids if alive(pid, started)]
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = [pid for pid, started in pids if alive(pid, started)]
    return running


@pytest.fixture
def pid_dir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = pytester.path / "pids"
    directory.mkdir()
    monkeypatch.setenv("FAULT_PIDS", str(directory))
    pytester.makeconftest(CONFTEST)
    return directory


def assert_clean_exit(result: pytest.RunResult, pid_dir: Path, *, workers: bool = True) -> None:
    """No INTERNALERROR, and every process the inner run made is gone."""
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output, output
    if workers:
        assert recorded(pid_dir), "no worker process recorded its pid"
    assert left_running(pid_dir) == []


# -- the one run of issue 7: six faults, six clear failures -----------------------------------

SIX_FAULTS = (
    PREAMBLE
    + """
@pytest.fixture
def two_locks():
    return threading.Lock(), threading.Lock()

@pytest.mark.concurrent(workers=2, runs=5, timeout=5)
def test_deadlock(two_locks, concurrency):
    first, second = two_locks if concurrency.worker == 0 else two_locks[::-1]
    with first:
        concurrency.barrier()          # both hold their first lock: each waits for the other
        with second:
            pass

@pytest.mark.concurrent(workers=2, runs=5, timeout=5)
def test_lock_order_inversion(two_locks, concurrency):
    a, b = two_locks
    if concurrency.worker == 0:
        with a, b:                     # a then b ...
            pass
    concurrency.barrier()              # ... never at the same time as b then a: no hang
    if concurrency.worker == 1:
        with b, a:
            pass

@pytest.mark.concurrent(mode="processes", workers=2, runs=5, timeout=5)
def test_process_killed(concurrency):
    record_pid()
    if concurrency.worker == 1:
        os.kill(os.getpid(), signal.SIGKILL)

@pytest.mark.concurrent(mode="processes", workers=2, runs=5, timeout=1)
def test_process_hangs(concurrency):
    record_pid()
    if concurrency.worker == 0:
        time.sleep(120)

@pytest.mark.concurrent(workers="eight")
def test_bad_marker():
    pass

@pytest.fixture
def open_file(tmp_path):
    with open(tmp_path / "data.txt", "w") as handle:
        yield handle

@pytest.mark.concurrent(mode="processes", workers=2, runs=5)
def test_unpicklable_fixture(open_file):
    pass
"""
)


def test_six_faults_in_one_run_are_six_clear_failures_and_nothing_is_left(
    pytester: pytest.Pytester, run_subprocess, pid_dir: Path
) -> None:
    pytester.makepyfile(test_six=SIX_FAULTS)
    result = run_subprocess("-rfE")
    result.assert_outcomes(failed=5, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = result.stdout.str()
    deadlock = messages.DEADLOCK_PLAIN_HEADLINE.split("(")[0]
    inversion = messages.INVERSION_HEADLINE.split("{")[0]
    crashed = messages.CRASH_SIGNAL.format(signal="SIGKILL", number=9)
    bad_marker = messages.INVALID_SETTING.format(
        where="workers='eight' in @pytest.mark.concurrent on test_six.py::test_bad_marker",
        expected="expected a whole number",
    )
    result.stdout.fnmatch_lines(
        [
            f"*DeadlockError: {deadlock}*",
            "*worker * waits for Lock#* at test_six.py:*; it is held by*",
        ]
    )
    result.stdout.fnmatch_lines([f"*{inversion}*"])
    result.stdout.fnmatch_lines([f"*WorkerCrashed: worker 1 (pid *) {crashed} during run 0*"])
    result.stdout.fnmatch_lines(
        [
            "*HANG in run 0 of 5 (2 processes, seed *): worker 0 did not finish within 1s*",
            "*worker 0 is stuck here:*",
            '*File "*test_six.py", line * in test_process_hangs*',
        ]
    )
    assert bad_marker in text
    result.stdout.fnmatch_lines(
        [
            "*the fixture or argument 'open_file' (TextIOWrapper) cannot be "
            "sent to a worker process*",
            "*Fix: " + messages.UNPICKLABLE_VALUE_FIX[:50] + "*",
        ]
    )
    for nodeid in (
        "test_deadlock",
        "test_lock_order_inversion",
        "test_process_killed",
        "test_process_hangs",
        "test_unpicklable_fixture",
    ):
        result.stdout.fnmatch_lines([f"FAILED test_six.py::{nodeid} - *"])
    result.stdout.fnmatch_lines(["ERROR test_six.py::test_bad_marker - *"])
    assert_clean_exit(result, pid_dir)


# -- hung threads: stack, the lock waited on, abandoned and named; the next test runs ----------

HUNG_THREADS = (
    PREAMBLE
    + """
NEVER = threading.Event()
HELD = threading.Lock()

@pytest.mark.concurrent(workers=3, runs=3, timeout=0.5)
def test_lock_never_released(concurrency):
    if concurrency.worker == 0 and concurrency.run == 0:
        HELD.acquire()                 # never released
    concurrency.barrier()
    if concurrency.worker == 2:
        with HELD:
            pass

@pytest.mark.concurrent(workers=2, runs=3, timeout=0.5)
def test_waits_for_an_event(concurrency):
    if concurrency.worker == 1:
        NEVER.wait()

@pytest.mark.concurrent(workers=2, runs=3)
def test_next_test_runs():
    pass
"""
)


def test_hung_threads_fail_with_stack_and_lock_and_are_named_abandoned(
    pytester: pytest.Pytester, run_subprocess, pid_dir: Path
) -> None:
    pytester.makepyfile(test_hung=HUNG_THREADS)
    result = run_subprocess()
    result.assert_outcomes(failed=2, passed=1)
    wait_line = messages.HANG_WAITS_ON_LOCK.format(
        what="Lock (test_hung.HELD)",
        site="test_hung.py:14",
        holder="worker 0",
        taken_at="test_hung.py:11",
    ).strip()
    result.stdout.fnmatch_lines(
        [
            "*HANG in run 0 of 3 (3 threads, seed *): worker 2 did not finish within 0.5s",
            "*worker 2 is stuck here:*",
            '*File "*test_hung.py", line 14, in test_lock_never_released',
            "*with HELD:",
            f"*{wait_line}",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*HANG in run 0 of 3 (2 threads, seed *): worker 1 did not finish within 0.5s",
            "*worker 1 is stuck here:*",
            '*File "*test_hung.py", line 20, in test_waits_for_an_event',
            "*NEVER.wait()",
        ]
    )
    stacks = result.stdout.str().split("stuck here:")[1].split("reproduce:")[0]
    assert "threading.py" not in stacks and "runners" not in stacks  # the user's frames only
    result.stdout.fnmatch_lines(
        ["abandoned hung threads: concurrency-worker-2, concurrency-worker-1"]
    )
    assert_clean_exit(result, pid_dir, workers=False)


# -- crashed and hung processes --------------------------------------------------------------

CRASHED_PROCESSES = (
    PREAMBLE
    + """
@pytest.mark.concurrent(mode="processes", workers=2, runs=3)
def test_os_exit(concurrency):
    record_pid()
    if concurrency.worker == 1:
        os._exit(7)

@pytest.mark.concurrent(mode="processes", workers=2, runs=3)
def test_sigkill(concurrency):
    record_pid()
    if concurrency.worker == 0:
        os.kill(os.getpid(), signal.SIGKILL)

@pytest.mark.concurrent(mode="processes", workers=2, runs=3)
def test_segfault(concurrency):
    record_pid()
    if concurrency.worker == 1:
        ctypes.string_at(0)

@pytest.mark.concurrent(mode="processes", workers=2, runs=3, timeout=1)
def test_hangs(concurrency):
    record_pid()
    if concurrency.worker == 1:
        time.sleep(120)

@pytest.mark.concurrent(mode="processes", workers=2, runs=3)
def test_the_next_process_test_runs(concurrency):
    record_pid()
"""
)


def test_crashed_and_hung_processes_name_the_worker_and_how_and_leave_nothing(
    pytester: pytest.Pytester, run_subprocess, pid_dir: Path
) -> None:
    pytester.makepyfile(test_crashes=CRASHED_PROCESSES)
    result = run_subprocess("-rfE", "-v")
    result.assert_outcomes(failed=4, passed=1)
    for worker, how in (
        (1, messages.CRASH_EXIT.format(code=7)),
        (0, messages.CRASH_SIGNAL.format(signal="SIGKILL", number=9)),
        (1, messages.CRASH_SIGNAL.format(signal="SIGSEGV", number=11)),
    ):
        result.stdout.fnmatch_lines(
            [
                f"*WorkerCrashed: worker {worker} (pid *) {how} during "
                "run 0; the worker pool was restarted*"
            ]
        )
    result.stdout.fnmatch_lines(
        [
            "*Fatal Python error: Segmentation fault*",
            '*File "*test_crashes.py", line * in test_segfault*',
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*HANG in run 0 of 3 (2 processes, seed *): worker 1 did not finish within 1s*",
            "*worker 1 is stuck here:*",
            '*File "*test_crashes.py", line * in test_hangs*',
        ]
    )
    result.stdout.fnmatch_lines(["*::test_the_next_process_test_runs PASSED*"])
    assert_clean_exit(result, pid_dir)


# -- pytest-timeout (both methods), Ctrl-C, a failing fixture teardown ------------------------

TIMED_OUT = (
    PREAMBLE
    + """
@pytest.mark.timeout(5, method="{method}")
@pytest.mark.concurrent(mode="{mode}", workers=2, runs=1_000_000, timeout=60)
def test_outlives_pytest_timeout(concurrency):
    record_pid()
    time.sleep(0.01)  # healthy runs, more than 5s of them

def test_next():
    pass
"""
)


@pytest.mark.parametrize("mode", ["threads", "processes"])
@pytest.mark.parametrize("method", ["signal", "thread"])
def test_pytest_timeout_ends_the_test_and_no_process_outlives_it(
    pytester: pytest.Pytester, run_subprocess, pid_dir: Path, method: str, mode: str
) -> None:
    """Healthy runs outlast pytest-timeout's 5s: the series stops short of it and pytest-timeout
    ends the test while the workers are up (in processes, however long the pool took to start).
    With ``signal`` the test fails and the session goes on; with ``thread`` pytest-timeout
    dumps the stacks and ends pytest with ``os._exit(1)``: the worker processes die with it."""
    pytester.makepyfile(test_timeout=TIMED_OUT.format(method=method, mode=mode))
    result = run_subprocess("-p", "timeout", "-rf")
    assert result.ret == 1
    if method == "signal":
        result.assert_outcomes(failed=1, passed=1)
        result.stdout.fnmatch_lines(["FAILED *test_outlives_pytest_timeout - Failed: Timeout*"])
    else:
        result.stdout.fnmatch_lines(["*+ Timeout +*"])
        assert "test_next" not in result.stdout.str()
    assert_clean_exit(result, pid_dir, workers=mode == "processes")


LONG_RUN = (
    PREAMBLE
    + """
@pytest.mark.concurrent(mode="{mode}", workers=2, budget=120)
def test_long(concurrency):
    record_pid()
    (PIDS.parent / "started").touch()
    time.sleep(0.01)

def test_never_reached():
    pass
"""
)


def popen_pytest(pytester: pytest.Pytester, *args: str) -> subprocess.Popen[str]:
    return start_pytest(pytester.path, *args)


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_ctrl_c_ends_pytest_by_itself_and_leaves_no_process(
    pytester: pytest.Pytester, pid_dir: Path, mode: str
) -> None:
    pytester.makepyfile(test_long=LONG_RUN.format(mode=mode))
    proc = popen_pytest(pytester)
    output = interrupt_once_started(proc, pytester.path / "started")
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt" in output and "INTERNALERROR" not in output, output
    assert "test_never_reached" not in output
    if mode == "processes":
        assert recorded(pid_dir)
    assert left_running(pid_dir) == []


TEARDOWN_FAILS = (
    PREAMBLE
    + """
@pytest.fixture
def flaky_resource(tmp_path):
    yield str(tmp_path)
    raise RuntimeError("the resource would not close")

@pytest.mark.concurrent(mode="{mode}", workers=2, runs=3)
def test_uses_resource(flaky_resource, concurrency):
    record_pid()

@pytest.mark.concurrent(mode="{mode}", workers=2, runs=3)
def test_next(concurrency):
    record_pid()
"""
)


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_failing_fixture_teardown_is_an_error_and_leaves_no_process(
    pytester: pytest.Pytester, run_subprocess, pid_dir: Path, mode: str
) -> None:
    pytester.makepyfile(test_teardown=TEARDOWN_FAILS.format(mode=mode))
    result = run_subprocess("-rE")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["ERROR *test_uses_resource - RuntimeError: the resource would*"])
    assert_clean_exit(result, pid_dir, workers=mode == "processes")


KILLED_PARENT = (
    PREAMBLE
    + """
@pytest.mark.concurrent(mode="processes", workers=2, runs=1, timeout=120,
                        start_method="{start_method}")
def test_wait(concurrency):
    record_pid()
    (PIDS.parent / f"started-{{concurrency.worker}}").touch()
    time.sleep(120)
"""
)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_workers_die_with_a_sigkilled_pytest(
    pytester: pytest.Pytester, pid_dir: Path, start_method: str
) -> None:
    pytester.makepyfile(test_killed=KILLED_PARENT.format(start_method=start_method))
    proc = popen_pytest(pytester)
    try:
        for worker in (0, 1):
            wait_for_file(pytester.path / f"started-{worker}")
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert len(recorded(pid_dir)) >= 2
    assert left_running(pid_dir) == []


# -- bad input: one clear message each, naming the fix; never an INTERNALERROR -------------

BAD_INPUTS = {
    "marker argument of the wrong type": (
        "@pytest.mark.concurrent(runs='lots')\ndef test_bad():\n    pass\n",
        messages.INVALID_SETTING.format(
            where="runs='lots' in @pytest.mark.concurrent on test_bad_input.py::test_bad",
            expected="expected a whole number from 1 to 10000000, e.g. 100",
        ),
    ),
    "marker argument out of range": (
        "@pytest.mark.concurrent(workers=0)\ndef test_bad():\n    pass\n",
        messages.INVALID_SETTING.format(
            where="workers=0 in @pytest.mark.concurrent on test_bad_input.py::test_bad",
            expected="expected a whole number from 1 to 4096, e.g. 4 (or auto)",
        ),
    ),
    "unknown marker argument": (
        "@pytest.mark.concurrent(worker=3)\ndef test_bad():\n    pass\n",
        messages.UNKNOWN_MARKER_ARGUMENT.format(
            key="worker",
            where="@pytest.mark.concurrent on test_bad_input.py::test_bad",
            hint=' Did you mean "workers="?',
            known="*",
        ),
    ),
    "positional marker argument": (
        "@pytest.mark.concurrent(8)\ndef test_bad():\n    pass\n",
        messages.POSITIONAL_MARKER_ARGS.format(args=(8,), nodeid="test_bad_input.py::test_bad"),
    ),
    "sync body in asyncio mode": (
        "@pytest.mark.concurrent(mode='asyncio')\ndef test_bad():\n    pass\n",
        messages.SYNC_BODY_IN_ASYNCIO.format(nodeid="test_bad_input.py::test_bad"),
    ),
    "unpicklable body": (
        "def test_bad(concurrency):\n"
        "    for run in concurrency.runs(1, mode='processes'):\n"
        "        run(lambda: None, workers=2)\n",
        "*the function test_bad.<locals>.<lambda> (function) cannot be sent to a worker process*"
        + messages.UNPICKLABLE_FUNCTION_FIX[:40]
        + "*",
    ),
    "unpicklable result": (
        "def test_bad(concurrency):\n"
        "    for run in concurrency.runs(1, mode='processes'):\n"
        "        run(threading.Lock, workers=2)\n",
        messages.UNPICKLABLE_RESULT.format(worker=0, type="lock", error="*")[:-60] + "*",
    ),
    "barrier outside a concurrent run": (
        "def test_bad(concurrency):\n    concurrency.barrier()\n",
        messages.BARRIER_OUTSIDE_RUN,
    ),
    "nested concurrent runs": (
        "@pytest.mark.concurrent(workers=2, runs=2)\n"
        "def test_bad(concurrency):\n"
        "    for run in concurrency.runs(1):\n"
        "        run(len, workers=2)\n",
        messages.NESTED_RUN,
    ),
}


@pytest.mark.parametrize("fault", list(BAD_INPUTS))
def test_bad_input_gets_a_message_that_names_the_fix(
    pytester: pytest.Pytester, run_subprocess, pid_dir: Path, fault: str
) -> None:
    body, expected = BAD_INPUTS[fault]
    pytester.makepyfile(test_bad_input="import threading\nimport pytest\n\n" + body)
    result = run_subprocess()
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", outcomes.get("error", 0)) == 1
    text = " ".join(result.stdout.str().split())
    pattern = " ".join(expected.split())
    assert fnmatch_anywhere(text, pattern), f"{pattern!r} not in:\n{result.stdout.str()}"
    assert "interrupted" not in text  # a usage error is the test's failure, not an interrupt
    assert "Traceback (most recent call last)" not in text.split("Traceback in worker")[0]
    assert_clean_exit(result, pid_dir, workers=False)


def fnmatch_anywhere(text: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(text, "*" + pattern.replace("[", "[[]") + "*")


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (
            "--concurrency-workers=0",
            messages.INVALID_SETTING.format(
                where="--concurrency-workers=0",
                expected="expected a whole number from 1 to 4096, e.g. 4 (or auto)",
            ),
        ),
        (
            "--concurrency-runs=-5",
            messages.INVALID_SETTING.format(
                where="--concurrency-runs=-5", expected="expected a whole number from 1 to"
            ),
        ),
        (
            "--concurrency-timeout=0",
            messages.INVALID_SETTING.format(
                where="--concurrency-timeout=0",
                expected="expected a number of seconds greater than 0, e.g. 30",
            ),
        ),
        (
            "--concurrency-leaks=loud",
            messages.INVALID_SETTING.format(
                where="--concurrency-leaks=loud", expected="expected one of warn, fail, off"
            ),
        ),
    ],
)
def test_options_out_of_range_are_usage_errors(
    run, pytester: pytest.Pytester, option: str, expected: str
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert expected in result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
