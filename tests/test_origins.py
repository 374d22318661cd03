"""Origins are the user's code (issue 14, case 7): the raising line of a failure is the innermost
frame of the user's code, never the plugin's, pytest's or the standard library's; and a worker
of a controlled schedule torn down by Ctrl-C leaves without a traceback."""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

import _pytest.outcomes
import pluggy
import pytest
from interrupting import interrupt_once_started, start_pytest

from pytest_concurrency.engine import outcomes, owncode
from pytest_concurrency.engine.outcomes import origin_of
from pytest_concurrency.runners import process_data

# -- the rule: which frames are the user's ------------------------------------------------------


def test_the_user_frame_rule_skips_the_plugin_pytest_pluggy_and_the_stdlib_only() -> None:
    for tooling in (outcomes.__file__, owncode.__file__, pytest.__file__, pluggy.__file__):
        assert not owncode.is_user_file(tooling), tooling
    assert not owncode.is_user_file(_pytest.outcomes.__file__)
    assert not owncode.is_user_file(os.__file__)
    assert not owncode.is_user_file(json.decoder.__file__)
    assert not owncode.is_user_file("<frozen importlib._bootstrap>")
    assert not owncode.is_user_file("<string>")  # generated code: its caller is the origin
    assert owncode.is_user_file(__file__)
    # a third-party library is the user's code: a race inside it points at its line
    purelib = sysconfig.get_paths()["purelib"]
    assert owncode.is_user_file(os.path.join(purelib, "somelib", "core.py"))
    assert owncode.is_user_file("/opt/app/.venv/lib/python3.11/site-packages/somelib/core.py")


def _fail_here(message: str) -> None:
    pytest.fail(message)  # the line of a helper: the innermost user frame


def _hidden_check(ok: bool) -> None:
    __tracebackhide__ = True  # pytest's convention: the caller's line is the one to show
    if not ok:
        pytest.fail("not ok")


def _raised(function: Any, *args: object) -> BaseException:
    try:
        function(*args)
    except BaseException as exc:
        return exc
    raise AssertionError("nothing was raised")


def _line_of(function: Any, text: str) -> int:
    import inspect

    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_an_origin_is_the_innermost_user_frame() -> None:
    failed = origin_of(_raised(_fail_here, "a"))
    assert (failed.exc_type, failed.filename) == ("Failed", __file__)
    assert failed.lineno == _line_of(_fail_here, "pytest.fail(message)")

    def caller() -> None:
        _hidden_check(False)  # the origin: the helper hides itself

    hidden = origin_of(_raised(caller))
    assert (hidden.filename, hidden.lineno) == (__file__, _line_of(caller, "_hidden_check(False)"))

    def decode() -> None:
        json.loads("{")  # raised deep in the standard library

    decoded = origin_of(_raised(decode))
    assert decoded.exc_type == "json.decoder.JSONDecodeError"
    assert (decoded.filename, decoded.lineno) == (__file__, _line_of(decode, "json.loads"))


def test_without_a_user_frame_the_origin_is_the_innermost_frame() -> None:
    exc = _raised(json.loads, "{")
    exc.__traceback__ = exc.__traceback__.tb_next  # type: ignore[union-attr]  # stdlib only
    origin = origin_of(exc)
    assert origin.filename.startswith(os.path.dirname(json.__file__))
    assert origin_of(ValueError("never raised")).describe() == "ValueError at <unknown>:0"


def test_a_crash_stack_follows_the_same_rule() -> None:
    library = "/opt/app/.venv/lib/python3.11/site-packages/somelib/core.py"
    dump = (
        "Current thread 0x1 (most recent call first):\n"
        f'  File "{os.__file__}", line 3 in write\n'
        f'  File "{outcomes.__file__}", line 4 in report\n'
        f'  File "{library}", line 9 in crunch\n'
        f'  File "{__file__}", line 7 in test_body\n'
    )
    assert process_data.stack_origin(dump) == (library, 9)


# -- pytest.fail() on two lines: two origins, two messages, in every mode and form ---------------

TWO_FAILS = """
import pytest

def check(concurrency):
    if concurrency.worker % 2:
        pytest.fail("odd worker")
    pytest.fail("even worker")

@pytest.mark.concurrent(workers=4, runs=2)
def test_threads(concurrency):
    check(concurrency)

@pytest.mark.concurrent(workers=4, runs=2, mode="processes")
def test_processes(concurrency):
    check(concurrency)

@pytest.mark.concurrent(workers=4, runs=2)
async def test_asyncio(concurrency):
    check(concurrency)

def test_harness(concurrency):
    for run in concurrency.runs(2):
        run(lambda: check(concurrency), workers=4)
"""
FORMS = ("threads", "processes", "asyncio", "harness")


def failures_by_test(path: Path) -> dict[str, list[dict[str, Any]]]:
    report = json.loads(path.read_text())
    return {
        entry["nodeid"].rsplit("::", 1)[-1]: entry["failures"]
        for entry in report["tests"]
        if entry["kind"] == "concurrent"
    }


def test_two_pytest_fail_lines_are_two_origins_each_with_its_message(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_two_fails=TWO_FAILS)
    result = run_subprocess("-p", "no:randomly", "--concurrency-json=report.json", timeout=180)
    result.assert_outcomes(failed=len(FORMS))
    output = result.stdout.str()
    assert " at outcomes.py" not in output, output
    assert output.count("Failed at test_two_fails.py:5 (2 calls: workers 1, 3)") == len(FORMS)
    assert output.count("Failed at test_two_fails.py:6 (2 calls: workers 0, 2)") == len(FORMS)
    found = failures_by_test(pytester.path / "report.json")
    assert sorted(found) == sorted(f"test_{form}" for form in FORMS)
    for name, failures in found.items():
        got = {
            (f["origin"], Path(f["file"]).name, f["line"], f["message"], tuple(f["workers"]))
            for f in failures
        }
        assert got == {
            ("Failed at test_two_fails.py:5", "test_two_fails.py", 5, "odd worker", (1, 3)),
            ("Failed at test_two_fails.py:6", "test_two_fails.py", 6, "even worker", (0, 2)),
        }, name


# -- no origin in the plugin's own files ------------------------------------------------------

OWN_FILES = """
import json
import threading
import pytest

def deep(n):
    return deep(n + 1) + 1

@pytest.mark.concurrent(workers=2, runs=2)
def test_recursion():
    deep(0)

A = threading.Lock()
B = threading.Lock()

def inverted(concurrency, meet):
    first, second = (A, B) if concurrency.worker == 0 else (B, A)
    with first:
        meet()
        with second:
            pass

@pytest.mark.concurrent(workers=2, runs=20)
def test_deadlock(concurrency):
    inverted(concurrency, concurrency.barrier)

@pytest.mark.concurrent(workers=2, runs=50, schedule="random")
def test_scheduled_deadlock(concurrency):
    inverted(concurrency, lambda: None)

@pytest.mark.concurrent(workers=2, runs=2)
def test_stdlib():
    json.loads("{")
"""
USER_LINES = {
    "test_recursion": ("RecursionError", 6),
    "test_deadlock": ("pytest_concurrency.errors.DeadlockError", 19),
    "test_scheduled_deadlock": ("pytest_concurrency.errors.DeadlockError", 19),
    "test_stdlib": ("json.decoder.JSONDecodeError", 32),
}


def test_origins_never_point_into_the_plugin_or_the_stdlib(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_own_files=OWN_FILES)
    result = run_subprocess("-p", "no:randomly", "--concurrency-json=report.json", timeout=180)
    result.assert_outcomes(failed=len(USER_LINES))
    output = result.stdout.str()
    for name in ("perturb.py:", "primitives.py:", "tracked.py:", "scheduler.py:", "decoder.py:"):
        assert f" at {name}" not in output, output
    found = failures_by_test(pytester.path / "report.json")
    for name, (exc_type, line) in USER_LINES.items():
        got = {(f["exception"], Path(f["file"]).name, f["line"]) for f in found[name]}
        assert got == {(exc_type, "test_own_files.py", line)}, (name, found[name])
        result.stdout.fnmatch_lines([f"*{exc_type} at test_own_files.py:{line} (*"])


# -- Ctrl-C under a controlled schedule: the workers leave quietly ---------------------------

LONG_SCHEDULE = """
import pathlib
import threading
import pytest

LOCK = threading.Lock()
COUNT = [0]

def body():
    pathlib.Path("started").touch()
    for _ in range(500):
        with LOCK:
            COUNT[0] += 1

{test}
"""
SCHEDULED = {
    "marker": (
        '@pytest.mark.concurrent(workers=4, budget=120, schedule="random")\n'
        "def test_long():\n"
        "    body()\n",
        (),
    ),
    "option": (
        "@pytest.mark.concurrent(workers=4, budget=120)\ndef test_long():\n    body()\n",
        ("--concurrency-schedule=random",),
    ),
    "harness": (
        "def test_long(concurrency):\n"
        "    for run in concurrency.runs(budget=120):\n"
        "        run(body, workers=4)\n",
        ("--concurrency-schedule=random",),
    ),
}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("form", list(SCHEDULED))
def test_ctrl_c_under_a_controlled_schedule_prints_nothing_after_pytests_last_line(
    pytester: pytest.Pytester, form: str
) -> None:
    test, args = SCHEDULED[form]
    pytester.makepyfile(test_long=LONG_SCHEDULE.format(test=test))
    started = pytester.path / "started"
    proc = start_pytest(pytester.path, "-p", "no:randomly", "test_long.py", *args)
    output = interrupt_once_started(proc, started, settle=0.3)  # well inside the runs
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt" in output and "INTERNALERROR" not in output, output
    assert "ScheduleAborted" not in output, output
    assert "Exception in thread" not in output, output
    last = output.rstrip().splitlines()[-1]
    assert last.startswith("=") and " in " in last, output  # pytest's own last line
