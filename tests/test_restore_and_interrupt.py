"""The plugin restores everything it changes, even after failures, hangs and interrupts;
Ctrl-C ends the run promptly."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from interrupting import interrupt_once_started, start_pytest

RESTORE_CONFTEST = """
import faulthandler, signal, sys, threading, _thread, queue

SIGNALS = [getattr(signal, name) for name in
           ("SIGINT", "SIGTERM", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGPIPE")
           if hasattr(signal, name)]

def handlers():
    return {f"signal {int(number)}": signal.getsignal(number) for number in SIGNALS}

ORIGINAL = {
    "switch": sys.getswitchinterval(),
    "trace": sys.gettrace(),
    "profile": sys.getprofile(),
    "thread_trace": getattr(threading, "gettrace", lambda: None)(),
    "Lock": threading.Lock, "RLock": threading.RLock, "Condition": threading.Condition,
    "Event": threading.Event, "Semaphore": threading.Semaphore, "Barrier": threading.Barrier,
    "Queue": queue.Queue, "allocate_lock": _thread.allocate_lock,
    "excepthook": sys.excepthook, "threading_excepthook": threading.excepthook,
    "faulthandler": faulthandler.is_enabled(), **handlers(),
}

def state():
    now = {
        "switch": sys.getswitchinterval(),
        "trace": sys.gettrace(),
        "profile": sys.getprofile(),
        "thread_trace": getattr(threading, "gettrace", lambda: None)(),
        "Lock": threading.Lock, "RLock": threading.RLock, "Condition": threading.Condition,
        "Event": threading.Event, "Semaphore": threading.Semaphore,
        "Barrier": threading.Barrier, "Queue": queue.Queue,
        "allocate_lock": _thread.allocate_lock,
        "excepthook": sys.excepthook, "threading_excepthook": threading.excepthook,
        "faulthandler": faulthandler.is_enabled(), **handlers(),
    }
    if sys.version_info >= (3, 12):
        for tool in range(6):
            now[f"tool{tool}"] = sys.monitoring.get_tool(tool)
    return now

EXPECTED = dict(ORIGINAL)
if sys.version_info >= (3, 12):
    for tool in range(6):
        EXPECTED[f"tool{tool}"] = sys.monitoring.get_tool(tool)

CHANGED = []

PYTESTS_OWN = ("excepthook", "threading_excepthook", "faulthandler")  # set per session by pytest

def pytest_sessionstart(session):
    now = state()
    EXPECTED.update({key: now[key] for key in PYTESTS_OWN})

def pytest_runtest_logfinish(nodeid, keys=None):
    now = state()
    diff = {k: (EXPECTED[k], now[k]) for k in keys or EXPECTED if now[k] != EXPECTED[k]}
    if diff:
        CHANGED.append((nodeid, diff))

def pytest_sessionfinish(session):
    pytest_runtest_logfinish("<session end>",  # after an interrupt too
                             [key for key in EXPECTED if key not in PYTESTS_OWN])
    with open("restore-report.txt", "w") as out:
        out.write(repr(CHANGED))
"""

BODIES = """
import threading
import pytest

NEVER = threading.Event()

class Counter:
    n = 0

@pytest.mark.concurrent(workers=4, runs=30)
def test_passes():
    c = Counter()
    for _ in range(50):
        c.n += 1

@pytest.mark.concurrent(workers=4, runs=30)
def test_fails(concurrency):
    assert concurrency.run < 3

@pytest.mark.concurrent(workers=2, runs=3, timeout=0.5)
def test_hangs(concurrency):
    if concurrency.worker == 1:
        NEVER.wait(10)

def test_harness_fails(concurrency):
    for run in concurrency.runs(10):
        run(lambda: None, workers=3)
        assert run.index < 2

@pytest.mark.concurrent(workers=2, runs=3, perturb=False)
def test_unperturbed():
    pass

@pytest.mark.concurrent(workers=2, runs=3, schedule="random")
def test_controlled_fails(concurrency):
    assert concurrency.run < 1

@pytest.mark.concurrent(mode="processes", workers=2, runs=3)
def test_processes_fail(concurrency):
    assert concurrency.run < 1

@pytest.mark.concurrent(mode="processes", workers=2, runs=3, timeout=0.5)
def test_processes_hang(concurrency):
    if concurrency.worker == 0:
        NEVER.wait(10)

@pytest.mark.concurrent(workers=2, runs=3)
async def test_asyncio_fails(concurrency):
    assert concurrency.run < 1

@pytest.fixture
def slow_setup():
    import time
    time.sleep(0.6)  # past the last start pytest-timeout's 1s leave: its call, not ours

@pytest.mark.timeout(1, method="signal")
@pytest.mark.concurrent(workers=2, runs=3, timeout=30)
def test_interrupted_by_pytest_timeout(slow_setup, concurrency):
    if concurrency.worker == 0:
        NEVER.wait(10)
"""


def test_everything_is_restored_after_pass_fail_and_hang(pytester, run_subprocess) -> None:
    pytester.makeconftest(RESTORE_CONFTEST)
    pytester.makepyfile(BODIES)
    result = run_subprocess("-p", "timeout", "-rf")
    result.assert_outcomes(passed=2, failed=8)
    result.stdout.fnmatch_lines(["*Failed: Timeout (>1.0s) from pytest-timeout*"])
    assert (pytester.path / "restore-report.txt").read_text() == "[]"


def test_a_worker_interrupt_ends_the_session_and_restores(pytester, run_subprocess) -> None:
    pytester.makeconftest(RESTORE_CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=3, runs=5)
        def test_interrupted(concurrency):
            if concurrency.run == 2 and concurrency.worker == 0:
                raise KeyboardInterrupt

        def test_never_reached():
            pass
        """
    )
    result = run_subprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    assert (pytester.path / "restore-report.txt").read_text() == "[]"


LONG_RUNS = {
    "marker": "@pytest.mark.concurrent(workers=4, budget=120)\n"
    "def test_long(concurrency):\n"
    "    pathlib.Path({started!r}).touch()\n"
    "    sum(range(1000))\n",
    "harness": "def test_long(concurrency):\n"
    "    for run in concurrency.runs(budget=120):\n"
    "        run(lambda: pathlib.Path({started!r}).touch(), workers=4)\n",
}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("form", list(LONG_RUNS))
def test_ctrl_c_during_a_long_run_exits_promptly_leaving_nothing(tmp_path: Path, form: str) -> None:
    started = tmp_path / "started"
    (tmp_path / "test_long.py").write_text(
        "import pathlib, pytest\n" + LONG_RUNS[form].format(started=str(started))
    )
    proc = start_pytest(tmp_path, str(tmp_path / "test_long.py"), "--concurrency-json=out.json")
    output = interrupt_once_started(proc, started, timeout=30)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt" in output
    assert "INTERNALERROR" not in output
    # the interrupted test keeps its runs in the summary and the JSON report
    assert re.search(
        r"^  test_long\.py::test_long: interrupted after \d+ runs \(threads, 4 "
        r"workers\): KeyboardInterrupt$",
        output,
        re.MULTILINE,
    ), output
    (entry,) = json.loads((tmp_path / "out.json").read_text())["tests"]
    assert (entry["outcome"], entry["interrupted"]) == ("interrupted", "KeyboardInterrupt")
    assert not Path(f"/proc/{proc.pid}").exists() or os.waitpid(proc.pid, os.WNOHANG)
