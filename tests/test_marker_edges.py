"""The marker at its edges (issue 14, case 7): unittest methods, which mark decides, fixtures
fetched inside the body, warning checks in a concurrent body."""

from __future__ import annotations

import sys

import pytest

from pytest_concurrency import messages

# -- unittest.TestCase methods: refused when the user marks them ------------------------------

UNITTEST = """
import threading
import unittest

import pytest

pytestmark = pytest.mark.concurrent(workers=4, runs=3)

class TestMarked(unittest.TestCase):
    def setUp(self):
        self.calls = []

    @pytest.mark.concurrent(workers=4, runs=3)
    def test_method(self):
        raise AssertionError("the body of a refused method must not run")

@pytest.mark.concurrent(workers=4, runs=3)
class TestMarkedClass(unittest.TestCase):
    def test_from_the_class(self):
        raise AssertionError("the body of a refused method must not run")

class TestUnderTheModuleMark(unittest.TestCase):
    def test_from_the_module(self):
        raise AssertionError("the body of a refused method must not run")

@pytest.mark.not_concurrent
class TestOptedOut(unittest.TestCase):
    def test_opted_out(self):
        assert threading.current_thread() is threading.main_thread()
"""


def test_a_marked_unittest_method_is_refused_at_setup_with_the_fix(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_unittest_marked=UNITTEST)
    result = run_subprocess("-p", "no:randomly")
    result.assert_outcomes(errors=3, passed=1)
    for nodeid in (
        "test_unittest_marked.py::TestMarked::test_method",
        "test_unittest_marked.py::TestMarkedClass::test_from_the_class",
        "test_unittest_marked.py::TestUnderTheModuleMark::test_from_the_module",
    ):
        refusal = messages.UNITTEST_METHOD.format(nodeid=nodeid)
        result.stdout.fnmatch_lines([refusal.split(": it cannot")[0] + "*"])
    result.stdout.fnmatch_lines(["*cannot run concurrently*Fix: move the body to a plain*"])
    result.stdout.no_fnmatch_line("*must not run*")


# --concurrency-all runs TestCase methods concurrently (issue 17): tests/test_run_all_unittest.py


# -- the closest of concurrent and not_concurrent decides: function > class > module ----------

FUNCTION_OPTS_OUT = """
import threading
import pytest

pytestmark = pytest.mark.concurrent(workers=4, runs=3)

def in_worker():
    return threading.current_thread() is not threading.main_thread()

@pytest.mark.not_concurrent(reason="prints to a shared console")
def test_opted_out():
    assert not in_worker()

def test_module_mark():
    assert in_worker()

@pytest.mark.not_concurrent
class TestClassOptsOut:
    def test_in_class(self):
        assert not in_worker()

    @pytest.mark.concurrent(workers=2, runs=2)
    def test_method_opts_in(self):
        assert in_worker()
"""


@pytest.mark.parametrize("extra", [(), ("--concurrency-all",)], ids=["marked", "run-all"])
def test_not_concurrent_on_the_function_wins_over_the_module_mark(
    pytester: pytest.Pytester, run_subprocess, extra: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_function_opts_out=FUNCTION_OPTS_OUT)
    result = run_subprocess("-p", "no:randomly", *extra)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*2 concurrent tests,*",
            "*2 tests ran once, not concurrently:*",
            f"*1 {messages.SERIAL_NOT_CONCURRENT}: prints to a shared console:*test_opted_out*",
            f"*1 {messages.SERIAL_NOT_CONCURRENT}: *TestClassOptsOut::test_in_class*",
        ]
    )


MODULE_OPTS_OUT = """
import threading
import pytest

pytestmark = pytest.mark.not_concurrent

def in_worker():
    return threading.current_thread() is not threading.main_thread()

@pytest.mark.concurrent(workers=4, runs=3)
def test_opts_in():
    assert in_worker()

def test_module_mark():
    assert not in_worker()

@pytest.mark.concurrent(workers=2, runs=2)
class TestClassOptsIn:
    def test_in_class(self):
        assert in_worker()
"""


@pytest.mark.parametrize("extra", [(), ("--concurrency-all",)], ids=["marked", "run-all"])
def test_concurrent_on_the_function_wins_over_a_module_not_concurrent(
    pytester: pytest.Pytester, run_subprocess, extra: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_module_opts_out=MODULE_OPTS_OUT)
    result = run_subprocess("-p", "no:randomly", *extra)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*2 concurrent tests, 5 runs, 16 calls; 0 with failures*"])


# -- request.getfixturevalue inside the body ---------------------------------------------------

GETFIXTUREVALUE_RUN_ALL = """
import pytest

@pytest.fixture
def thing():
    return 1

def test_fetches(request):
    assert request.getfixturevalue("thing") == 1

def test_fetches_capsys(request):
    capsys = request.getfixturevalue("capsys")
    print("hello")
    assert capsys.readouterr().out == "hello\\n"

def test_plain(thing):
    assert thing == 1
"""


def test_run_all_runs_a_test_calling_getfixturevalue_once_and_says_why(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_fetch_all=GETFIXTUREVALUE_RUN_ALL)
    result = run_subprocess("-p", "no:randomly", "--concurrency-all")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*1 concurrent tests,*0 with failures*",
            "*2 tests ran once, not concurrently:*",
            f"*2 {messages.SERIAL_GETFIXTUREVALUE}: test_fetch_all.py::test_fetches,"
            " test_fetch_all.py::test_fetches_capsys*",
        ]
    )


GETFIXTUREVALUE_MARKED = """
import time
import pytest

@pytest.fixture
def slow_thing():
    time.sleep(0.3)  # every worker comes in while the first one sets it up
    return 1

@pytest.mark.concurrent(workers=4, runs=5)
def test_fetches(request):
    assert request.getfixturevalue("slow_thing") == 1
"""


def test_a_marked_test_calling_getfixturevalue_fails_with_the_fix_not_pytests_assertion(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_fetch_marked=GETFIXTUREVALUE_MARKED)
    result = run_subprocess("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    headline = messages.GETFIXTUREVALUE_IN_BODY.split("{")[0]
    result.stdout.fnmatch_lines(
        [
            f"{headline}test_fetch_marked.py::test_fetches calls request.getfixturevalue()*"
            "*Fix: resolve the fixture before the workers start*",
            "*reproduce: pytest test_fetch_marked.py::test_fetches --concurrency-seed=*",
            f"FAILED test_fetch_marked.py::test_fetches - Failed: {headline}*",
        ]
    )
    result.stdout.no_fnmatch_line("E*AssertionError")


# -- pytest.warns / deprecated_call / warnings.catch_warnings in a concurrent body -------------

WARNING_CHECKS = """
import time
import warnings
import pytest

def warn(category=UserWarning):
    time.sleep(0.002)
    warnings.warn("careful", category)

@pytest.mark.concurrent(workers=4, runs=50)
def test_warns():
    with pytest.warns(UserWarning):
        warn()

@pytest.mark.concurrent(workers=4, runs=50)
def test_deprecated_call():
    with pytest.deprecated_call():
        warn(DeprecationWarning)

@pytest.mark.concurrent(workers=4, runs=50)
def test_catch_warnings():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warn()
    assert len(seen) == 1

@pytest.mark.concurrent(workers=4, runs=3)
def test_only_warns_and_fails():
    warnings.warn("just a warning", UserWarning)
    assert False, "a failure of its own"

@pytest.mark.concurrent(workers=2, runs=2, mode="processes")
def test_warns_in_processes_and_fails():  # one call per process: its own warning filters
    with pytest.warns(UserWarning):
        warn()
    assert False, "a failure of its own"

@pytest.mark.concurrent(workers=4, runs=3)
def test_only_warns_and_passes():
    warnings.warn("just a warning", UserWarning)
"""


def test_warning_checks_in_a_marked_body_are_named_in_the_report_with_the_fix(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_warning_checks=WARNING_CHECKS)
    pytester.makeini("[pytest]\nfilterwarnings =\n    ignore::UserWarning\n")
    result = run_subprocess("-p", "no:randomly")
    note = messages.WARNING_CHECKS_NOT_THREAD_SAFE
    if getattr(sys.flags, "context_aware_warnings", False):  # 3.14t: filters per context
        result.assert_outcomes(failed=2, passed=4)  # the checks pass; no note blames them
        assert note.split("{names}")[1].strip() not in result.stdout.str()
        return
    result.assert_outcomes(failed=5, passed=1)
    result.stdout.fnmatch_lines(["*a failure of its own*"])
    result.stdout.fnmatch_lines(
        [
            "*" + note.format(names="pytest.warns").strip() + "*",
            "*" + note.format(names="pytest.deprecated_call").strip() + "*",
            "*" + note.format(names="warnings.catch_warnings").strip() + "*",
        ]
    )
    output = result.stdout.str()
    # not for warnings.warn alone, nor in process mode
    assert output.count(note.split("{names}")[1].strip()) == 3


def test_no_warning_check_note_where_the_filters_are_per_context(
    pytester: pytest.Pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``sys.flags.context_aware_warnings`` (3.14's free-threaded build) a worker's
    ``pytest.warns`` leaves the others' filters alone: a failure is never blamed on it."""
    from pytest_concurrency.plugin import verdicts

    pytester.makepyfile(
        """
        import warnings
        import pytest

        @pytest.mark.concurrent(workers=2, runs=1)
        def test_fails_with_a_check():
            with pytest.warns(UserWarning):
                warnings.warn("careful", UserWarning)
            assert False, "a failure of its own"
        """
    )
    note = messages.WARNING_CHECKS_NOT_THREAD_SAFE.split("{names}")[1].strip()
    monkeypatch.setattr(verdicts, "warning_filters_are_per_context", lambda: False)
    assert note in run("-p", "no:randomly").stdout.str()
    monkeypatch.setattr(verdicts, "warning_filters_are_per_context", lambda: True)
    result = run("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    assert note not in result.stdout.str()
