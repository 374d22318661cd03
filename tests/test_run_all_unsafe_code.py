"""--concurrency-all recognises thread-unsafe test code before it raises a false alarm
(issue 17): read from the test's code (ast), such tests run once and are named with the
reason; an ini list adds names."""

from __future__ import annotations

import ast
import json

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.unsafe_code import unsafe_reasons

PATTERNS = """
import contextlib, ctypes, doctest, io, logging, os, random, sys, unittest, warnings
from unittest import mock
import pytest

def given(*args):  # as hypothesis spells it: recognised by its name
    return lambda function: function

def test_warns():
    with pytest.warns(UserWarning):
        warnings.warn("x", UserWarning)

def test_deprecated_call():
    with pytest.deprecated_call():
        warnings.warn("x", DeprecationWarning)

def test_catch_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

def test_simplefilter():
    warnings.simplefilter("default")

def test_patch():
    with mock.patch("os.getcwd", return_value="x"):
        assert os.getcwd() == "x"

@mock.patch("os.getpid", return_value=1)
def test_patch_decorator(patched):
    assert os.getpid() == 1

def test_patch_object():
    with mock.patch.object(os, "sep", "x"):
        pass

def test_environ_item():
    os.environ["AUDIT_X"] = "1"
    del os.environ["AUDIT_X"]

def test_environ_method():
    os.environ.pop("AUDIT_Y", None)

def test_chdir():
    os.chdir(os.getcwd())

def test_sys_modules():
    sys.modules.pop("no_such_module", None)

def test_sys_path():
    sys.path.insert(0, "nowhere"); sys.path.remove("nowhere")

def test_stdout():
    saved = sys.stdout; sys.stdout = io.StringIO(); sys.stdout = saved

def test_redirect():
    with contextlib.redirect_stdout(io.StringIO()):
        print("x")

def test_settrace():
    sys.settrace(sys.gettrace())

def test_random_seed():
    random.seed(0)
    assert random.random() < 1

def test_logging():
    with unittest.TestCase().assertLogs(level="WARNING"):
        logging.warning("x")

def test_assert_warns():
    with unittest.TestCase().assertWarns(UserWarning):
        warnings.warn("x", UserWarning)

def test_ctypes():
    assert ctypes.c_int(1).value == 1

def test_doctest():
    doctest.run_docstring_examples(len, {})

@given(1)
def test_given():
    pass

def test_tmp_path_write(tmp_path):
    (tmp_path / "a.txt").write_text("x")

def test_capsys(capsys):
    print("x")

def test_monkeypatch(monkeypatch):
    monkeypatch.setattr(os, "sep", os.sep)

def test_tmp_path_read_only(tmp_path):
    assert tmp_path.is_dir()

def test_clean():
    assert os.path.join("a", "b") == "a" + os.sep + "b"
"""

EXPECTED = {
    "test_warns": messages.SERIAL_WARNINGS.format(name="warns"),
    "test_deprecated_call": messages.SERIAL_WARNINGS.format(name="deprecated_call"),
    "test_catch_warnings": messages.SERIAL_WARNINGS.format(name="catch_warnings"),
    "test_simplefilter": messages.UNSAFE_WARNING_FILTERS,
    "test_patch": messages.UNSAFE_MOCK_PATCH,
    "test_patch_decorator": messages.UNSAFE_MOCK_PATCH,
    "test_patch_object": messages.UNSAFE_MOCK_PATCH,
    "test_environ_item": messages.UNSAFE_ENVIRON,
    "test_environ_method": messages.UNSAFE_ENVIRON,
    "test_chdir": messages.UNSAFE_CHDIR,
    "test_sys_modules": messages.UNSAFE_SYS_MODULES,
    "test_sys_path": messages.UNSAFE_SYS_PATH,
    "test_stdout": messages.UNSAFE_REDIRECT,
    "test_redirect": messages.UNSAFE_REDIRECT,
    "test_settrace": messages.UNSAFE_TRACE,
    "test_random_seed": messages.UNSAFE_RANDOM_SEED,
    "test_logging": messages.UNSAFE_LOGGING,
    "test_assert_warns": messages.UNSAFE_WARNING_FILTERS,
    "test_ctypes": messages.UNSAFE_CTYPES,
    "test_doctest": messages.UNSAFE_DOCTEST,
    "test_given": messages.UNSAFE_HYPOTHESIS,
    "test_tmp_path_write": messages.UNSAFE_TMP_PATH,
    "test_capsys": messages.SERIAL_UNSAFE_FIXTURE.format(names="capsys"),
    "test_monkeypatch": messages.SERIAL_UNSAFE_FIXTURE.format(names="monkeypatch"),
}


def serial_reasons(pytester: pytest.Pytester) -> dict[str, str]:
    document = json.loads((pytester.path / "report.json").read_text())
    return {entry["nodeid"].split("::")[-1]: entry["reason"] for entry in document["serial"]}


def concurrent_names(pytester: pytest.Pytester) -> set[str]:
    document = json.loads((pytester.path / "report.json").read_text())
    return {entry["nodeid"].split("::")[-1] for entry in document["tests"]}


def test_each_thread_unsafe_pattern_runs_once_with_its_reason(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_patterns=PATTERNS)
    result = run_subprocess(
        "-p", "no:randomly", "--concurrency-all", "--concurrency-json=report.json"
    )
    result.assert_outcomes(passed=len(EXPECTED) + 2)
    assert serial_reasons(pytester) == EXPECTED
    assert concurrent_names(pytester) == {"test_tmp_path_read_only", "test_clean"}
    result.stdout.fnmatch_lines([f"*{len(EXPECTED)} tests ran once, not concurrently:*"])


CONFIGURED = """
import pytest
import registry

@pytest.fixture
def fresh_registry():
    registry.reset()
    yield

@pytest.fixture
def environment_once():
    import os
    os.environ["AUDIT_ONCE"] = "1"  # a fixture runs once, before the workers: not a collision
    yield

def test_calls_a_listed_name():
    registry.reset()

def test_through_a_fixture(fresh_registry):
    pass

def test_fixture_changes_environ_once(environment_once):
    pass
"""


def test_an_ini_list_adds_names_read_in_the_body_and_the_fixtures(pytester, run_subprocess) -> None:
    pytester.makepyfile(registry="def reset():\n    pass\n", test_configured=CONFIGURED)
    pytester.makeini("[pytest]\nconcurrency_unsafe_names =\n    registry.reset\n")
    result = run_subprocess(
        "-p", "no:randomly", "--concurrency-all", "--concurrency-json=report.json"
    )
    result.assert_outcomes(passed=3)
    listed = messages.UNSAFE_CONFIGURED.format(name="registry.reset")
    assert serial_reasons(pytester) == {
        "test_calls_a_listed_name": listed,
        "test_through_a_fixture": listed,
    }
    assert concurrent_names(pytester) == {"test_fixture_changes_environ_once"}


UNITTEST_SETUP = """
import os
import unittest

class TestChangesEnviron(unittest.TestCase):
    def setUp(self):
        os.environ["AUDIT_CASE"] = "1"

    def test_method(self):
        pass
"""


def test_a_testcase_setup_is_read_as_the_body_is(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_case_setup=UNITTEST_SETUP)
    result = run_subprocess(
        "-p", "no:randomly", "--concurrency-all", "--concurrency-json=report.json"
    )
    result.assert_outcomes(passed=1)
    assert serial_reasons(pytester) == {"test_method": messages.UNSAFE_ENVIRON}


# -- the pure reader ---------------------------------------------------------------------


def reasons(source: str, **kwargs: object) -> list[str]:
    return unsafe_reasons(ast.parse(source), **kwargs)  # type: ignore[arg-type]


def test_reading_a_local_copy_or_reads_is_no_reason() -> None:
    assert reasons("env = dict(os.environ)\nenv['X'] = '1'\nos.environ.get('X')") == []
    assert reasons("sys.modules.get('x')\nprint(sys.path[0])") == []
    assert reasons("path.write_text('x')") == []  # without tmp_path, a write is no collision
    assert reasons("path.write_text('x')", writes_tmp_path=True) == [messages.UNSAFE_TMP_PATH]


def test_a_source_with_several_patterns_gives_each_reason_once() -> None:
    found = reasons("os.chdir('a')\nos.chdir('b')\nos.environ['X'] = '1'")
    assert sorted(found) == sorted([messages.UNSAFE_CHDIR, messages.UNSAFE_ENVIRON])
