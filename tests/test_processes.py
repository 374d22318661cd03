"""Acceptance: mode="processes", the same marker and harness with worker processes.

Every inner run is a subprocess (``runpytest_subprocess``): these tests start, crash, hang and
kill processes, and a process left behind must be seen, not inherited by our own run.
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

from pytest_concurrency import messages
from pytest_concurrency.driver.series import run_series
from pytest_concurrency.engine.outcomes import SeriesOutcome
from pytest_concurrency.runners import process_data, processes
from pytest_concurrency.runners.base import RunPlan

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses fcntl and POSIX signals")

COUNTER = """
import fcntl
import functools
from pathlib import Path

def increment(path):
    value = int(Path(path).read_text() or 0)   # read ...
    Path(path).write_text(str(value + 1))      # ... modify, write: another process may interleave

def increment_locked(path):
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # one process at a time, released on close
        increment(path)

def test_counter_race(concurrency, tmp_path):
    path = str(tmp_path / "counter")
    for run in concurrency.runs(300, mode="processes"):
        Path(path).write_text("0")
        run(functools.partial(increment, path), workers=4)
        assert Path(path).read_text() == "4"

def test_counter_locked(concurrency, tmp_path):
    path = str(tmp_path / "counter")
    for run in concurrency.runs(25, mode="processes"):
        Path(path).write_text("0")
        run(functools.partial(increment_locked, path), workers=4)
        assert Path(path).read_text() == "4"
"""

SQLITE = """
import sqlite3
import pytest

CONNECTIONS = {}

def connection(path):
    '''One connection per process, opened in the process that uses it.'''
    if path not in CONNECTIONS:
        CONNECTIONS[path] = sqlite3.connect(path, timeout=30, isolation_level=None)
    return CONNECTIONS[path]

def sign_up(path, name):
    db = connection(path)
    if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
        db.execute("INSERT INTO users (name) VALUES (?)", (name,))

def sign_up_fixed(path, name):
    connection(path).execute("INSERT OR IGNORE INTO users (name) VALUES (?)", (name,))

def count(path, name):
    return connection(path).execute("SELECT count(*) FROM users WHERE name = ?",
                                    (name,)).fetchone()[0]

@pytest.fixture
def racy_db(tmp_path):
    path = str(tmp_path / "racy.db")
    sqlite3.connect(path).execute("CREATE TABLE users (name TEXT)").connection.close()
    return path            # a path, not a connection: it pickles

@pytest.fixture
def fixed_db(tmp_path):
    path = str(tmp_path / "fixed.db")
    sqlite3.connect(path).execute("CREATE TABLE users (name TEXT UNIQUE)").connection.close()
    return path

@pytest.mark.concurrent(mode="processes", workers=4, runs=300)
def test_sign_up_race(racy_db, concurrency):
    name = f"user-{concurrency.run}"
    sign_up(racy_db, name)
    assert count(racy_db, name) == 1

@pytest.mark.concurrent(mode="processes", workers=4, runs=25)
def test_sign_up_fixed(fixed_db, concurrency):
    name = f"user-{concurrency.run}"
    sign_up_fixed(fixed_db, name)
    assert count(fixed_db, name) == 1
"""


def test_file_counter_and_sqlite_races_are_found_and_their_fixed_twins_pass(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_counter=COUNTER, test_signup=SQLITE)
    result = run_subprocess()
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(["*FAILED after run * of 300 (4 processes, seed *)*"])
    result.stdout.re_match_lines(  # every call fails when all the inserts land before a check
        [  # (often so when the children are slowed, under coverage)
            r".*(RACE DETECTED|FAILED) in run \d+ of 300 \(4 processes, seed \d+\).*",
            r".*AssertionError at test_signup\.py:.*",
            r".*assert [234] == 1.*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["FAILED test_counter.py::test_counter_race*", "FAILED test_signup.py::test_sign_up_race*"]
    )


CHILDREN = """
import os
import sqlite3
import threading
import pytest

@pytest.fixture
def scratch(tmp_path):
    return tmp_path

@pytest.fixture
def db(tmp_path):
    connection = sqlite3.connect(tmp_path / "x.db")
    yield connection
    connection.close()

@pytest.mark.concurrent(mode="processes", workers=3, runs=6)
def test_meet(scratch, concurrency):
    assert concurrency.mode == "processes"
    (scratch / f"{concurrency.run}-{concurrency.worker}").write_text(str(os.getpid()))
    concurrency.barrier()                       # every process of the run has written its file
    arrived = {p.name for p in scratch.iterdir() if p.name.startswith(f"{concurrency.run}-")}
    assert arrived == {f"{concurrency.run}-{w}" for w in range(3)}

def test_results_come_back(concurrency):
    for run in concurrency.runs(3, mode="processes"):
        got = run(os.getpid, workers=2)
        assert len(set(got)) == 2 and os.getpid() not in got

@pytest.mark.concurrent(mode="processes", workers=2, runs=3)
def test_fixture(db):
    pass

@pytest.mark.concurrent(mode="processes", workers=2, runs=3, start_method="fork")
def test_fixture_inherited_by_fork(db):
    assert db is not None                       # fork: the children inherit what will not pickle

def test_local_function(concurrency):
    def body():
        pass
    for run in concurrency.runs(3, mode="processes"):
        run(body, workers=2)

def make_lock():
    return threading.Lock()

def test_result(concurrency):
    for run in concurrency.runs(3, mode="processes"):
        run(make_lock, workers=2)
"""


def test_children_run_the_body_and_what_does_not_pickle_is_named_before_any_run(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_children=CHILDREN)
    result = run_subprocess("-v")
    result.assert_outcomes(passed=3, failed=3)
    result.stdout.fnmatch_lines(["concurrency: processes start with forkserver (the default*"])
    result.stdout.fnmatch_lines(
        [
            "*::test_meet PASSED*",
            "*::test_results_come_back PASSED*",
            "*::test_fixture FAILED*",
            "*::test_fixture_inherited_by_fork PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*the fixture or argument 'db' (Connection) cannot be sent to a worker process*",
            "*a path or plain settings instead of an open handle*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*the function test_local_function.<locals>.body (function) cannot be sent*",
            "*define the function at module level*",
        ]
    )
    result.stdout.fnmatch_lines(["*worker 0 returned a lock that cannot be sent back*"])
    assert "RACE DETECTED" not in result.stdout.str()


SIGNALS = """
import threading
import pytest

def unpicklable(signal):
    signal.lock = threading.Lock()  # the child cannot send this exception itself
    return signal

@pytest.mark.concurrent(mode="processes", workers=2, runs=2)
def test_skip():
    pytest.skip("every worker skips")

@pytest.mark.concurrent(mode="processes", workers=2, runs=2)
def test_skip_unpicklable():
    try:
        pytest.skip("skips with a lock")
    except pytest.skip.Exception as signal:
        raise unpicklable(signal)

@pytest.mark.concurrent(mode="processes", workers=2, runs=2)
def test_xfail():
    pytest.xfail("every worker xfails")

@pytest.mark.concurrent(mode="processes", workers=2, runs=2)
def test_xfail_unpicklable():
    try:
        pytest.xfail("xfails with a lock")
    except pytest.xfail.Exception as signal:
        raise unpicklable(signal)

@pytest.mark.concurrent(mode="processes", workers=2, runs=2)
def test_rewritten_assert():
    found = 3
    assert found == 1
"""


def test_skip_xfail_and_rewritten_asserts_in_worker_processes(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    """A skip or xfail in a child is pytest's own outcome in the parent (rebuilt from its text
    when the child's exception does not unpickle), and a failing ``assert`` in a child explains
    itself as pytest's assertion rewriting does in the parent."""
    pytester.makepyfile(test_signals=SIGNALS)
    result = run_subprocess("-rsx", "-v")
    result.assert_outcomes(skipped=2, xfailed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*::test_skip SKIPPED*",
            "*::test_skip_unpicklable SKIPPED*",
            "*::test_xfail XFAIL*",
            "*::test_xfail_unpicklable XFAIL*",
            "*::test_rewritten_assert FAILED*",
        ]
    )
    out = result.stdout.str()
    for text in ("every worker skips", "skips with a lock", "every worker xfails"):
        assert text in out
    assert "xfails with a lock" in out
    result.stdout.fnmatch_lines(["*assert 3 == 1*"])


CRASHES = """
import ctypes
import os
import signal
import time
import pytest

def record_pid(directory):
    (directory / str(os.getpid())).write_text("")

@pytest.fixture
def pids(tmp_path_factory):
    directory = tmp_path_factory.getbasetemp() / "pids"
    directory.mkdir(exist_ok=True)
    return directory

@pytest.mark.concurrent(mode="processes", workers=2, runs=3)
def test_exit(concurrency, pids):
    record_pid(pids)
    if concurrency.worker == 1:
        os._exit(3)

@pytest.mark.concurrent(mode="processes", workers=2, runs=3)
def test_sigkill(concurrency, pids):
    record_pid(pids)
    if concurrency.worker == 0:
        os.kill(os.getpid(), signal.SIGKILL)

@pytest.mark.concurrent(mode="processes", workers=2, runs=3)
def test_segfault(concurrency, pids):
    record_pid(pids)
    if concurrency.worker == 1:
        ctypes.string_at(0)

@pytest.mark.concurrent(mode="processes", workers=2, runs=3, timeout=1)
def test_hang(concurrency, pids):
    record_pid(pids)
    if concurrency.worker == 0:
        time.sleep(60)

"""


def test_crashes_and_hangs_name_the_worker_and_leave_no_process(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_crashes=CRASHES)
    result = run_subprocess(f"--basetemp={pytester.path / 'tmp'}")
    pids = pytester.path / "tmp" / "pids"
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "*WorkerCrashed: worker 1 (pid *) exited with code 3 (os._exit()*) during run 0*",
            "*WorkerCrashed at test_crashes.py:* (1 call: worker 1)*",
        ]
    )
    result.stdout.fnmatch_lines(["*worker 0 (pid *) was killed by signal SIGKILL (9)*"])
    result.stdout.fnmatch_lines(
        [
            "*worker 1 (pid *) was killed by signal SIGSEGV (11)*",
            "*Fatal Python error: Segmentation fault*",
            '*File "*test_crashes.py", line * in test_segfault*',
            "*WorkerCrashed at test_crashes.py:* (1 call: worker 1)*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*HANG in run 0 of 3 (2 processes, seed *): worker 0 did not finish within 1s*",
            "*worker 0 is stuck here:*",
            '*File "*test_crashes.py", line * in test_hang*',
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str()
    recorded = [int(path.name) for path in pids.iterdir()]
    assert len(recorded) >= 8
    assert not [pid for pid in recorded if _alive(pid)]


def test_children_die_with_a_killed_parent(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os
        import time
        import pytest

        @pytest.fixture
        def base(tmp_path_factory):
            return tmp_path_factory.getbasetemp()   # made here, in the parent

        @pytest.mark.concurrent(mode="processes", workers=2, runs=1, timeout=120)
        def test_wait(base):
            (base / f"pid-{os.getpid()}").write_text("")
            time.sleep(120)
        """
    )
    base = pytester.path / "tmp"
    process = pytester.popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:run-parallel",
            f"--basetemp={base}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        children = _wait_for(lambda: [int(p.name[4:]) for p in base.glob("pid-*")], count=2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    assert len(children) == 2
    assert _wait_for(lambda: [pid for pid in children if not _alive(pid)], count=2) == children


def test_start_method_is_chosen_on_the_command_line_and_validated(
    pytester: pytest.Pytester, run
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    run("--concurrency-start-method=spawn").stdout.fnmatch_lines(
        ["concurrency: processes start with spawn (chosen)"]
    )
    result = run("--concurrency-start-method=thread")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--concurrency-start-method=thread: start method must be auto or one of *forkserver*"]
    )


def test_messages_and_default_method() -> None:
    assert processes.default_start_method() == "forkserver"
    assert "forkserver" in processes.describe_start_method(None)
    assert processes.describe_start_method("spawn") == messages.START_METHOD_CHOSEN.format(
        method="spawn"
    )
    assert process_data.describe_exit(-signal.SIGKILL) == "was killed by signal SIGKILL (9)"
    assert process_data.stack_origin('Current thread 0x1:\n  File "/a/b.py", line 12 in f\n') == (
        "/a/b.py",
        12,
    )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False
    except Exception:  # pragma: no cover - no /proc
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def _wait_for(found, *, count: int, seconds: float = 60.0) -> list[int]:
    """Poll until ``found()`` lists ``count`` pids (a bounded wait, not a timing check)."""
    deadline = time.monotonic() + seconds
    items: list[int] = found()
    while len(items) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        items = found()
    return sorted(items)


def test_a_crash_fails_its_run_and_the_next_series_gets_a_new_pool() -> None:
    runner = processes.ProcessRunner(2)
    try:
        crashed = _series(runner, functools.partial(os._exit, 5))
        assert crashed.failing_run is not None
        failure = crashed.failing_run.failures[0]
        assert failure.origin.exc_type == "WorkerCrashed"
        assert "exited with code 5" in failure.message
        first = _series(runner, os.getpid, runs=2)
        second = _series(runner, os.getpid, runs=1)
        assert not first.failed and not second.failed
        assert first.runs_done == 2 and second.runs_done == 1
    finally:
        runner.close()


def _series(runner: processes.ProcessRunner, call, runs: int = 3) -> SeriesOutcome:
    outcome = SeriesOutcome(mode="processes", workers=2, runs_planned=runs, seed=7)
    run_series(
        runner,
        [call, call],
        outcome=outcome,
        plan=RunPlan(count=runs),
        timeout=30,
        keep_results=True,
    )
    return outcome


def test_a_signal_that_did_not_unpickle_is_rebuilt_by_the_hooks_the_plugin_lends() -> None:
    from pytest_concurrency.engine.outcomes import CallKind
    from pytest_concurrency.plugin.calls import pytest_hooks
    from pytest_concurrency.runners import process_child

    hooks = pytest_hooks()
    for kind, outcome in (
        (CallKind.SKIPPED, pytest.skip.Exception("skipped in a child")),
        (CallKind.XFAILED, pytest.xfail.Exception("xfailed in a child")),
    ):
        data = {**process_child.failure_data(outcome, kind), "pickled": None}
        rebuilt = process_data.rebuild_exception(data, 0, hooks.signal)
        assert type(rebuilt) is type(outcome) and str(rebuilt) == str(outcome)
        stand_in = process_data.rebuild_exception(data, 0)  # no hooks: a stand-in of that name
        assert type(stand_in).__qualname__ == type(outcome).__qualname__
        assert not isinstance(stand_in, type(outcome))
    assert hooks.rewrite_asserts is not None
    assert pickle.loads(pickle.dumps(hooks.rewrite_asserts)) is hooks.rewrite_asserts


def test_a_crash_is_placed_in_user_code_not_the_stdlib_or_pytest() -> None:
    dump = (
        "Current thread 0x1 (most recent call first):\n"
        f'  File "{os.__file__}", line 3 in write\n'
        f'  File "{pytest.__file__}", line 5 in main\n'
        f'  File "{__file__}", line 7 in test_body\n'
    )
    assert process_data.stack_origin(dump) == (__file__, 7)


def test_the_header_names_the_start_method_process_mode_uses() -> None:
    """The header answers without importing multiprocessing; the runner asks multiprocessing."""
    from pytest_concurrency.engine import cores

    assert cores.default_start_method() == processes.default_start_method()
