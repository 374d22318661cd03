"""Acceptance: crash-safe runs. A concurrent test whose workers crash the interpreter
(segfault, abort, os._exit) is that test's failure with the signal, every thread's stack and
the reproduction line, under ``--concurrency-isolate`` (or ``isolate=True``); the session goes
on and the summary and the JSON report keep every test. Without isolation the crash's
faulthandler dump names the test and the fix; under xdist the "worker crashed" report does.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import signal
import xml.etree.ElementTree as ET

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine import cores, report
from pytest_concurrency.engine.crashes import (
    ONE_THREAD_ONLY,
    Crash,
    SeriesFacts,
    crash_note,
    crash_summary_lines,
    crash_text,
    crashed_entry,
    user_frames,
)

CRASHES = """
import ctypes
import os
import pytest

@pytest.fixture
def crashing_fixture():
    ctypes.string_at(0)

@pytest.mark.concurrent(workers=2, runs=3)
def test_segfault():
    print("about to read address 0")
    ctypes.string_at(0)

@pytest.mark.concurrent(workers=2, runs=3)
def test_abort():
    os.abort()

@pytest.mark.concurrent(workers=2, runs=3)
def test_exits():
    os._exit(3)

@pytest.mark.concurrent(workers=2, runs=3)
def test_setup_crashes(crashing_fixture):
    pass

@pytest.mark.xfail(reason="known to crash", strict=True)
@pytest.mark.concurrent(workers=2, runs=3)
def test_expected_crash():
    ctypes.string_at(0)

def test_harness_crash(concurrency):
    for run in concurrency.runs(3):
        run(lambda: ctypes.string_at(0), workers=2)

@pytest.mark.concurrent(workers=2, runs=4)
def test_fine():
    pass

def test_plain():
    pass
"""

SEGFAULT_THEN_PASS = """
import ctypes
import pytest

@pytest.mark.concurrent(workers=2, runs=3{marker})
def test_segfault():
    ctypes.string_at(0)

@pytest.mark.concurrent(workers=2, runs=2)
def test_next():
    pass
"""


def crashed_line(nodeid: str, phase: str, how: str) -> str:
    return messages.TEST_CRASHED.format(nodeid=nodeid, phase=phase, how=how, pid="*", where="*")


def by_test(path) -> dict[str, dict]:
    return {entry["nodeid"]: entry for entry in json.loads(path.read_text())["tests"]}


SEGV = messages.TEST_CRASH_SIGNAL.format(signal="SIGSEGV", number=int(signal.SIGSEGV))
ABRT = messages.TEST_CRASH_SIGNAL.format(signal="SIGABRT", number=int(signal.SIGABRT))


def test_each_crash_fails_its_test_and_the_session_goes_on(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_crashes=CRASHES)
    out = pytester.path / "out.json"
    xml = pytester.path / "junit.xml"
    result = run_subprocess(
        "--concurrency-isolate", f"--concurrency-json={out}", f"--junitxml={xml}"
    )
    result.assert_outcomes(passed=2, failed=4, errors=1, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            messages.HEADER_ISOLATED,
            crashed_line("test_crashes.py::test_segfault", "call", SEGV),
            messages.TEST_CRASH_STACKS if cores.gil_enabled() else messages.TEST_CRASH_ONE_STACK,
            "    Fatal Python error: Segmentation fault",
            '      File "*test_crashes.py", line * in test_segfault',
            "  reproduce: pytest test_crashes.py::test_segfault --concurrency-seed=* "
            "--concurrency-isolate=true",
            "*- Captured stdout call -*",
            "about to read address 0*",  # two workers print: their lines may interleave
        ]
    )
    text = result.stdout.str()
    segfault = text.split("_ test_segfault _", 1)[1].split("_ test_abort _", 1)[0]
    if cores.gil_enabled():
        assert segfault.count("Current thread 0x") == 1
        assert segfault.count("Thread 0x") >= 2  # the other worker and the main thread too
    else:  # a free-threaded build: faulthandler cannot walk the other threads
        assert ONE_THREAD_ONLY in segfault
    result.stdout.fnmatch_lines([crashed_line("test_crashes.py::test_abort", "call", ABRT)])
    exited = messages.TEST_CRASH_EXIT.format(code=3)
    result.stdout.fnmatch_lines([crashed_line("test_crashes.py::test_exits", "call", exited)])
    result.stdout.fnmatch_lines(
        [crashed_line("test_crashes.py::test_setup_crashes", "setup", SEGV)]
    )
    result.stdout.fnmatch_lines([crashed_line("test_crashes.py::test_harness_crash", "call", SEGV)])
    result.stdout.fnmatch_lines(
        [
            "*= concurrency =*",
            "7 concurrent tests, 4 runs, 8 calls; 6 with failures, 6 crashed",
            messages.TEST_CRASH_SUMMARY.format(
                nodeid="test_crashes.py::test_segfault",
                how="SIGSEGV",
                phase="call",
                mode="threads",
                workers=2,
            ),
            "    reproduce: pytest test_crashes.py::test_segfault --concurrency-seed=*",
        ]
    )
    tests = by_test(out)
    assert len(tests) == 7
    segv = tests["test_crashes.py::test_segfault"]
    assert segv["crashed"] is True and segv["isolated"] is True
    assert (segv["signal"], segv["exit_code"], segv["crash_phase"]) == ("SIGSEGV", None, "call")
    assert "Segmentation fault" in segv["crash_stacks"]
    assert segv["outcome"] == "failed"
    assert segv["reproduce"].startswith("pytest test_crashes.py::test_segfault --concurrency-seed=")
    assert (segv["mode"], segv["workers"], segv["runs_planned"]) == ("threads", 2, 3)
    assert tests["test_crashes.py::test_abort"]["signal"] == "SIGABRT"
    assert tests["test_crashes.py::test_exits"]["exit_code"] == 3
    assert tests["test_crashes.py::test_exits"]["signal"] is None
    assert tests["test_crashes.py::test_setup_crashes"]["crash_phase"] == "setup"
    assert tests["test_crashes.py::test_setup_crashes"]["outcome"] == "failed"
    assert tests["test_crashes.py::test_expected_crash"]["outcome"] == "xfailed"
    assert tests["test_crashes.py::test_harness_crash"]["signal"] == "SIGSEGV"
    fine = tests["test_crashes.py::test_fine"]
    assert (fine["outcome"], fine["runs_done"], fine["calls"]) == ("passed", 4, 8)
    assert fine["isolated"] is True and "crashed" not in fine
    cases = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ET.parse(xml).getroot().iter("testcase")
    }
    assert cases["test_segfault"]["concurrency_verdict"] == report.VERDICT_CRASHED
    assert cases["test_fine"]["concurrency_verdict"] == report.VERDICT_CLEAN


def test_the_reproduction_line_crashes_the_same_way(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_it=SEGFAULT_THEN_PASS.format(marker=", isolate=True"))
    out = pytester.path / "out.json"
    first = run_subprocess(f"--concurrency-json={out}")
    first.assert_outcomes(passed=1, failed=1)
    entry = by_test(out)["test_it.py::test_segfault"]
    command = shlex.split(entry["reproduce"])
    assert command[0] == "pytest"
    again = run_subprocess(*command[1:], f"--concurrency-json={out}")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines([crashed_line("test_it.py::test_segfault", "call", SEGV)])
    replayed = by_test(out)["test_it.py::test_segfault"]
    assert replayed["seed"] == entry["seed"]
    assert replayed["signal"] == "SIGSEGV"


REAPED = """
import ctypes
import os
import time
import pytest

@pytest.fixture
def hangs():
    time.sleep(600)

@pytest.fixture
def child_pid(tmp_path_factory):  # the setup runs once, in the child
    (tmp_path_factory.getbasetemp() / "segfault.pid").write_text(str(os.getpid()))

@pytest.mark.concurrent(workers=2, runs=3)
def test_segfault(child_pid):
    ctypes.string_at(0)

@pytest.mark.timeout(3)
@pytest.mark.concurrent(workers=2, runs=1)
def test_hangs_in_setup(tmp_path_factory, hangs):
    pass

def test_children_were_reaped(tmp_path_factory):
    pid = int((tmp_path_factory.getbasetemp() / "segfault.pid").read_text())
    assert pid != os.getpid()
    with pytest.raises(ChildProcessError):  # not a zombie, not running: reaped
        os.waitpid(pid, os.WNOHANG)
    with pytest.raises(ChildProcessError):  # no child of this session is left at all
        os.waitpid(-1, os.WNOHANG)
"""


def test_the_child_is_reaped_also_when_pytest_timeout_stops_it(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_reaped=REAPED)
    out = pytester.path / "out.json"
    result = run_subprocess("--concurrency-isolate", f"--concurrency-json={out}", "-p", "timeout")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            messages.ISOLATED_CUT_SHORT.format(
                pid="*",
                nodeid="test_reaped.py::test_hangs_in_setup",
                error="Failed: Timeout (>3.0s) from pytest-timeout.",
            ),
            messages.TEST_CRASH_STACKS if cores.gil_enabled() else messages.TEST_CRASH_ONE_STACK,
            "*Fatal Python error: Aborted*",
            '*File "*test_reaped.py", line * in hangs',
        ]
    )
    hung = by_test(out)["test_reaped.py::test_hangs_in_setup"]
    assert hung["crashed"] is False
    assert hung["interrupted"] == "Failed: Timeout (>3.0s) from pytest-timeout."


WARNS = """
import warnings
import pytest

class LibraryWarning(UserWarning):
    pass

@pytest.mark.concurrent(workers=2, runs=1)
def test_warns():
    warnings.warn("said inside the child", LibraryWarning)
"""


def test_an_isolated_tests_warnings_reach_the_summary(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_warns=WARNS)
    result = run_subprocess("--concurrency-isolate", "-W", "always::UserWarning")
    result.assert_outcomes(passed=1, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "test_warns.py::test_warns",
            "*test_warns.py:*: LibraryWarning: said inside the child",
        ]
    )


INTERRUPTED = """
import os
import signal
import time
import pytest

@pytest.fixture
def child_pid(tmp_path_factory):  # the setup runs once, in the child
    (tmp_path_factory.getbasetemp() / "child.pid").write_text(str(os.getpid()))

@pytest.mark.concurrent(workers=2, runs=1)
def test_interrupts_the_session(child_pid):
    os.kill(os.getppid(), signal.SIGINT)  # Ctrl-C reaches the session, not this child
    time.sleep(600)

def test_never_runs():
    pass
"""


def test_ctrl_c_stops_and_reaps_the_child_and_keeps_the_report(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_interrupted=INTERRUPTED)
    out = pytester.path / "out.json"
    result = run_subprocess("--concurrency-isolate", f"--concurrency-json={out}")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            messages.ISOLATED_CUT_SHORT.format(
                pid="*", nodeid="test_interrupted.py::test_interrupts_the_session", error="*"
            ),
            "*KeyboardInterrupt*",
        ]
    )
    assert "test_never_runs" not in result.stdout.str()
    entry = by_test(out)["test_interrupted.py::test_interrupts_the_session"]
    assert entry["crashed"] is False and entry["interrupted"] == "KeyboardInterrupt"
    pid = int((pytester.path / "runpytest-0" / "child.pid").read_text())
    with pytest.raises(ProcessLookupError):  # not left running
        os.kill(pid, 0)


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "not-isolated"])
def test_under_xdist_the_crash_is_that_tests_failure(pytester, run_subprocess, isolate) -> None:
    pytester.makepyfile(test_it=SEGFAULT_THEN_PASS.format(marker=""))
    out = pytester.path / "out.json"
    options = ["--concurrency-isolate"] if isolate else []
    result = run_subprocess("-n", "2", *options, f"--concurrency-json={out}")
    result.assert_outcomes(passed=1, failed=1)
    if isolate:
        result.stdout.fnmatch_lines(
            [
                crashed_line("test_it.py::test_segfault", "call", SEGV),
                "    Fatal Python error: Segmentation fault",
            ]
        )
    else:
        result.stdout.fnmatch_lines(
            [
                "worker 'gw*' crashed while running 'test_it.py::test_segfault'",
                "pytest-concurrency: the worker died while test_it.py::test_segfault ran "
                "concurrently (threads, 2 workers, seed *); --concurrency-isolate *",
                "  reproduce: pytest test_it.py::test_segfault --concurrency-seed=*",
            ]
        )
    tests = by_test(out)
    assert set(tests) == {"test_it.py::test_segfault", "test_it.py::test_next"}
    crashed = tests["test_it.py::test_segfault"]
    assert crashed["crashed"] is True and crashed["isolated"] is isolate
    assert crashed["signal"] == ("SIGSEGV" if isolate else None)
    assert crashed["outcome"] == "failed"
    assert tests["test_it.py::test_next"]["outcome"] == "passed"
    assert tests["test_it.py::test_next"]["runs_done"] == 2


def test_without_isolation_the_crash_dump_names_the_test_and_the_fix(
    pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_it=SEGFAULT_THEN_PASS.format(marker=""))
    result = run_subprocess("--concurrency-seed=4242")
    assert result.ret == -signal.SIGSEGV  # nothing can go on in a process that segfaulted
    expected = crash_note(
        "test_it.py::test_segfault",
        SeriesFacts(
            mode="threads",
            workers=2,
            runs=3,
            budget=None,
            seed=0,
            reproduce_seed=4242,
            reproduce="pytest test_it.py::test_segfault --concurrency-seed=4242",
        ),
    )
    result.stderr.fnmatch_lines(["Fatal Python error: Segmentation fault", f'*File "{expected}"*'])


def test_with_the_gil_disabled_each_worker_thread_carries_the_note(
    pytester, run_subprocess
) -> None:
    """A free-threaded build's faulthandler shows only the thread that crashed, a worker: the
    note is then on each worker's stack too (simulated here on a GIL build)."""
    pytester.makeconftest(
        "import pytest_concurrency.engine.cores as cores\ncores.gil_enabled = lambda: False\n"
    )
    pytester.makepyfile(test_it=SEGFAULT_THEN_PASS.format(marker=""))
    result = run_subprocess("--concurrency-seed=4242")
    assert result.ret == -signal.SIGSEGV
    note = '*File "<pytest-concurrency was running test_it.py::test_segfault here (*'
    notes = [line for line in result.stderr.lines if fnmatch.fnmatch(line, note)]
    if cores.gil_enabled():  # every thread is shown: the main thread's, the crashed worker's
        assert len(notes) >= 2  # (and the other worker's, unless it was between two calls)
    else:
        assert len(notes) == 1


def test_a_platform_without_fork_refuses_isolation_with_the_reason(
    pytester, run_subprocess
) -> None:
    pytester.makeconftest("import os\ndel os.fork\n")
    pytester.makepyfile(test_it=SEGFAULT_THEN_PASS.format(marker=", isolate=True"))
    result = run_subprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [messages.ISOLATE_UNAVAILABLE.format(nodeid="test_it.py::test_segfault")]
    )


def test_when_no_fork_is_to_be_had_the_test_runs_in_the_session_with_a_warning(
    pytester, run_subprocess
) -> None:
    pytester.makeconftest(
        "import os\n"
        "def refuse():\n"
        "    raise BlockingIOError(11, 'Resource temporarily unavailable')\n"
        "os.fork = refuse\n"
    )
    pytester.makepyfile(
        test_it="""
import pytest

@pytest.mark.concurrent(workers=2, runs=2, isolate=True)
def test_runs_anyway():
    pass
"""
    )
    result = run_subprocess()
    result.assert_outcomes(passed=1, warnings=1)
    error = "*Resource temporarily unavailable"  # after "[Errno 11]", a glob class to fnmatch
    result.stdout.fnmatch_lines([f"*{messages.ISOLATE_FORK_FAILED.format(error=error)}"])


# -- the pure pieces -----------------------------------------------------------------------

FACTS = SeriesFacts(
    mode="threads",
    workers=4,
    runs=100,
    budget=None,
    seed=7,
    reproduce_seed=99,
    reproduce="pytest t.py::test_x --concurrency-seed=99",
)


def test_a_crash_says_how_it_died() -> None:
    assert Crash(pid=1, phase="call", returncode=-11, stacks="").signal == "SIGSEGV"
    assert Crash(pid=1, phase="call", returncode=-6, stacks="").exit_code is None
    exited = Crash(pid=1, phase="call", returncode=3, stacks="")
    assert (exited.signal, exited.exit_code) == (None, 3)
    assert exited.describe() == messages.TEST_CRASH_EXIT.format(code=3)


def test_the_series_facts_survive_json() -> None:
    assert SeriesFacts.from_json(json.loads(json.dumps(FACTS.to_json()))) == FACTS
    sharded = SeriesFacts(**{**FACTS.to_json(), "shard": (1, 4)})
    assert SeriesFacts.from_json(json.loads(json.dumps(sharded.to_json()))) == sharded


def test_the_stacks_keep_the_users_frames_and_each_threads_innermost() -> None:
    dump = [
        "Fatal Python error: Segmentation fault",
        "",
        "Current thread 0x01 (most recent call first):",
        '  File "/usr/lib/python3.11/ctypes/__init__.py", line 519 in string_at',
        '  File "/project/test_native.py", line 6 in test_body',
        f'  File "{pytest.__file__}", line 1 in runtest',
        f'  File "{json.__file__}", line 2 in dumps',
        "",
        "Thread 0x02 (most recent call first):",
        f'  File "{json.__file__}", line 3 in wait',
    ]
    kept = user_frames(dump)
    assert kept == [
        *dump[:5],
        "  (2 frames of pytest, pluggy, the plugin and the standard library left out)",
        "",
        *dump[8:],
    ]


def test_the_crash_note_stays_within_what_faulthandler_prints() -> None:
    long = SeriesFacts(**{**FACTS.to_json(), "reproduce": "pytest " + "x" * 1000})
    note = crash_note("t.py::test_x", long)
    assert len(note) <= 480 and note.startswith("<") and note.endswith(">")
    assert "t.py::test_x" in note and "seed 99" in note and "--concurrency-isolate" in note


def test_the_summary_names_each_crashed_test() -> None:
    crash = Crash(pid=1, phase="teardown", returncode=-6, stacks="")
    entry = crashed_entry("t.py::test_x", crash, FACTS)
    assert entry["runs_planned"] == 100 and entry["seed"] == 7
    assert crash_summary_lines([entry]) == [
        messages.TEST_CRASH_SUMMARY.format(
            nodeid="t.py::test_x", how="SIGABRT", phase="teardown", mode="threads", workers=4
        ),
        "    reproduce: pytest t.py::test_x --concurrency-seed=99",
    ]


def test_a_free_threaded_dump_says_it_shows_one_thread() -> None:
    dump = f"Fatal Python error: Segmentation fault\n\n{ONE_THREAD_ONLY}\nStack (most recent call first):\n"
    text = crash_text(
        "t.py::test_x", Crash(pid=1, phase="call", returncode=-11, stacks=dump), FACTS
    )
    assert messages.TEST_CRASH_ONE_STACK in text.splitlines()
    assert messages.TEST_CRASH_STACKS not in text.splitlines()
