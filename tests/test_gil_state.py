"""Issue 16: the GIL coming back on a free-threaded build is named, per test.

The inner runs simulate a free-threaded build on whatever build runs the suite: their conftest
replaces the engine's seam (``cores.gil_enabled``, ``cores.free_threaded_build``) with a switch
that starts off, and a test "imports an extension module without ``Py_mod_gil``" by putting a
module with an extension file name into ``sys.modules`` and turning the switch on, as CPython
does on such an import.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine import cores, gilstate
from pytest_concurrency.engine.gilstate import (
    WHERE_BETWEEN,
    WHERE_COLLECTION,
    WHERE_TEST,
    GilReading,
    GilReturn,
    gil_came_back,
    is_extension_module,
    read_gil,
)

SIMULATED_BUILD = """
import sys
import types

from pytest_concurrency.engine import cores

SWITCH = {"gil": False}
cores.gil_enabled = lambda: SWITCH["gil"]
cores.free_threaded_build = lambda: True


def import_gil_user(name="gil_user_ext"):
    \"\"\"What importing an extension module that lacks Py_mod_gil does.\"\"\"
    module = types.ModuleType(name)
    module.__file__ = "/site-packages/" + name + ".cpython-314t-x86_64-linux-gnu.so"
    sys.modules[name] = module
    SWITCH["gil"] = True
"""

TESTS = """
import threading

import pytest

from conftest import import_gil_user

once = threading.Lock()


@pytest.mark.concurrent(workers=3, runs=5)
def test_before():
    pass


@pytest.mark.concurrent(workers=3, runs=5)
def test_imports_it():
    if once.acquire(blocking=False):
        import_gil_user()


def test_harness_after(concurrency):
    for run in concurrency.runs(4):
        run(lambda: None, workers=2)
"""


def extension_name(name: str) -> str:
    return f"/site-packages/{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}"


def fake_extension(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = extension_name(name)
    return module


# -- the pure part --------------------------------------------------------------------------


def test_without_the_probe_the_gil_counts_as_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)
    assert cores.gil_enabled() is True
    assert read_gil() == GilReading(enabled=True)


def test_a_reading_keeps_the_module_names_only_while_the_gil_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cores, "gil_enabled", lambda: False)
    off = read_gil()
    assert not off.enabled and "sys" in off.modules
    monkeypatch.setattr(cores, "gil_enabled", lambda: True)
    assert read_gil().modules == frozenset()


def test_the_return_names_the_extension_modules_first_imported_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = GilReading(enabled=False, modules=frozenset(sys.modules))
    monkeypatch.setitem(sys.modules, "plain_py_module", types.ModuleType("plain_py_module"))
    monkeypatch.setitem(sys.modules, "zz_ext", fake_extension("zz_ext"))
    monkeypatch.setitem(sys.modules, "aa_ext", fake_extension("aa_ext"))
    back = gil_came_back(before, GilReading(enabled=True), WHERE_TEST, "t.py::test_x")
    assert back == GilReturn(WHERE_TEST, "t.py::test_x", ("aa_ext", "zz_ext"))
    assert back.describe() == messages.GIL_BACK_IN_TEST.format(
        nodeid="t.py::test_x",
        cause=messages.GIL_CAUSE_MODULES.format(modules="aa_ext, zz_ext"),
    )


def test_no_return_when_the_gil_was_on_already_or_is_still_off() -> None:
    on, off = GilReading(enabled=True), GilReading(enabled=False, modules=frozenset())
    assert gil_came_back(on, on, WHERE_TEST) is None
    assert gil_came_back(off, off, WHERE_TEST) is None
    assert gil_came_back(on, off, WHERE_TEST) is None


def test_a_return_without_a_new_extension_module_says_the_cause_is_unknown() -> None:
    before = GilReading(enabled=False, modules=frozenset(sys.modules))
    back = gil_came_back(before, GilReading(enabled=True), WHERE_COLLECTION)
    assert back is not None and back.modules == ()
    assert messages.GIL_CAUSE_UNKNOWN in back.describe()
    assert back.describe().startswith(messages.GIL_BACK_IN_COLLECTION.split("(")[0])


def test_extension_modules_are_told_from_others() -> None:
    assert is_extension_module(fake_extension("x"))
    assert not is_extension_module(types.ModuleType("y"))
    assert not is_extension_module(sys)  # built in: declares Py_mod_gil
    standard = fake_extension("_socket")  # the standard library's, from lib-dynload
    assert not is_extension_module(standard)
    assert not is_extension_module(None)
    assert not is_extension_module(object())  # sys.modules may hold anything
    assert not is_extension_module(gilstate)


def test_an_entry_carries_the_return_and_gives_it_back() -> None:
    entry: dict[str, object] = {"kind": "concurrent", "nodeid": "t.py::test_x"}
    back = GilReturn(WHERE_TEST, "t.py::test_x", ("aa_ext",))
    gilstate.mark_entry(entry, GilReading(enabled=True), back)  # type: ignore[arg-type]
    assert entry["gil_enabled"] is True and entry["gil_reenabled"] is True
    assert entry["gil_modules"] == ["aa_ext"]
    assert gilstate.returned_in(entry) == back  # type: ignore[arg-type]
    gilstate.mark_entry(entry, GilReading(enabled=False), None)  # type: ignore[arg-type]
    assert gilstate.returned_in(entry) is None  # type: ignore[arg-type]
    assert entry["gil_modules"] == []


# -- through pytest, on a simulated free-threaded build --------------------------------------


def entries_by_name(path: Path) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
    document = json.loads(path.read_text())
    tests = {entry["nodeid"].split("::")[-1]: entry for entry in document["tests"]}
    return document, tests  # the header's keys are at the top of the document


def test_a_test_during_which_the_gil_came_back_is_named(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makeconftest(SIMULATED_BUILD)
    pytester.makepyfile(test_gil=TESTS)
    result = run_subprocess("-p", "no:randomly", "-rA", "--concurrency-json=report.json")
    result.assert_outcomes(passed=3)
    nodeid = "test_gil.py::test_imports_it"
    cause = messages.GIL_CAUSE_MODULES.format(modules="gil_user_ext")
    named = messages.GIL_BACK_IN_TEST.format(nodeid=nodeid, cause=cause)
    result.stdout.fnmatch_lines(
        [
            "*free-threaded build, GIL disabled*",  # the header, before it came back
            f"*Captured {messages.GIL_REPORT_SECTION} call*",  # its own report section (-rA)
            f"{named} {messages.GIL_WARN_HINT}",
            "*= concurrency =*",
            f"{named}",
            messages.GIL_SUMMARY_STATE.format(interpreter="*GIL enabled"),
        ]
    )
    assert result.stdout.str().count(named) == 2  # its report and the summary, nobody else's
    header, tests = entries_by_name(pytester.path / "report.json")
    assert header["gil_enabled_at_start"] is False and header["gil_enabled"] is True
    assert header["gil_returns"] == [
        {"where": WHERE_TEST, "nodeid": nodeid, "modules": ["gil_user_ext"]}
    ]
    assert tests["test_before"]["gil_enabled"] is False
    assert tests["test_before"]["gil_reenabled"] is False
    assert tests["test_imports_it"]["gil_enabled"] is True
    assert tests["test_imports_it"]["gil_reenabled"] is True
    assert tests["test_imports_it"]["gil_modules"] == ["gil_user_ext"]
    assert tests["test_harness_after"]["gil_enabled"] is True  # ran held by the GIL
    assert tests["test_harness_after"]["gil_reenabled"] is False


def test_under_gil_fail_that_test_fails_and_the_others_pass(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makeconftest(SIMULATED_BUILD)
    pytester.makepyfile(test_gil=TESTS)
    result = run_subprocess("-p", "no:randomly", "--concurrency-gil=fail")
    result.assert_outcomes(passed=2, failed=1)
    cause = messages.GIL_CAUSE_MODULES.format(modules="gil_user_ext")
    named = messages.GIL_BACK_IN_TEST.format(nodeid="test_gil.py::test_imports_it", cause=cause)
    failure = f"{named} {messages.GIL_FAIL_HINT}"
    result.stdout.fnmatch_lines(
        [
            "*_ test_imports_it _*",
            failure,
            "*= concurrency =*",
            "FAILED test_gil.py::test_imports_it*",
        ]
    )
    assert result.stdout.str().count(failure) == 1  # no report section repeating the failure
    assert "Traceback" not in result.stdout.str()


def test_a_return_during_collection_is_shown_after_collection(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makeconftest(SIMULATED_BUILD)
    pytester.makepyfile(
        test_at_import="""
        import pytest

        from conftest import import_gil_user

        import_gil_user("imported_at_collection_ext")


        @pytest.mark.concurrent(workers=2, runs=3)
        def test_first():
            pass


        @pytest.mark.concurrent(workers=2, runs=3)
        def test_second():
            pass
        """
    )
    cause = messages.GIL_CAUSE_MODULES.format(modules="imported_at_collection_ext")
    said = messages.GIL_BACK_IN_COLLECTION.format(cause=cause)
    warned = run_subprocess("-p", "no:randomly")
    warned.assert_outcomes(passed=2)
    warned.stdout.fnmatch_lines(
        ["collected 2 items", f"concurrency: {said} {messages.GIL_WARN_HINT}", "*= concurrency =*"]
    )
    failed = run_subprocess("-p", "no:randomly", "--concurrency-gil=fail")
    failed.assert_outcomes(passed=1, errors=1)  # the first concurrent test answers for it
    failed.stdout.fnmatch_lines(["ERROR test_at_import.py::test_first*"])


def test_a_return_between_concurrent_tests_names_the_next_one(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makeconftest(SIMULATED_BUILD)
    pytester.makepyfile(
        test_between="""
        import pytest

        from conftest import import_gil_user


        @pytest.mark.concurrent(workers=2, runs=3)
        def test_first():
            pass


        def test_plain_import():
            import_gil_user("plain_test_ext")


        @pytest.mark.concurrent(workers=2, runs=3)
        def test_next():
            pass
        """
    )
    result = run_subprocess("-p", "no:randomly", "--concurrency-json=report.json")
    result.assert_outcomes(passed=3)
    cause = messages.GIL_CAUSE_MODULES.format(modules="plain_test_ext")
    said = messages.GIL_BACK_BETWEEN_TESTS.format(nodeid="test_between.py::test_next", cause=cause)
    result.stdout.fnmatch_lines(["*= concurrency =*", said])
    header, tests = entries_by_name(pytester.path / "report.json")
    assert [back["where"] for back in header["gil_returns"]] == [WHERE_BETWEEN]
    assert tests["test_next"]["gil_enabled"] is True
    assert tests["test_next"]["gil_reenabled"] is False


def test_on_this_build_nothing_is_said(pytester: pytest.Pytester, run_subprocess) -> None:
    """The real seam, unpatched: a GIL build (or a free-threaded one whose GIL stays off)."""
    pytester.makepyfile(
        """
        import pytest


        @pytest.mark.concurrent(workers=2, runs=3)
        def test_first():
            pass
        """
    )
    result = run_subprocess("-p", "no:randomly", "--concurrency-json=report.json")
    result.assert_outcomes(passed=1)
    assert "the GIL came back" not in result.stdout.str()
    header, tests = entries_by_name(pytester.path / "report.json")
    assert header["gil_returns"] == []
    assert header["gil_enabled_at_start"] is cores.gil_enabled()
    assert tests["test_first"]["gil_enabled"] is cores.gil_enabled()


def test_a_bad_gil_setting_names_its_source(pytester: pytest.Pytester, run_subprocess) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run_subprocess("--concurrency-gil=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*invalid --concurrency-gil=sometimes: expected one of warn, fail*"]
    )


def test_under_xdist_the_controller_names_the_test_from_its_entry(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makeconftest(SIMULATED_BUILD)
    pytester.makepyfile(test_gil=TESTS)
    result = run_subprocess("-p", "no:randomly", "-n", "1", "--concurrency-json=report.json")
    result.assert_outcomes(passed=3)
    nodeid = "test_gil.py::test_imports_it"
    cause = messages.GIL_CAUSE_MODULES.format(modules="gil_user_ext")
    result.stdout.fnmatch_lines(
        ["*= concurrency =*", messages.GIL_BACK_IN_TEST.format(nodeid=nodeid, cause=cause)]
    )
    header, tests = entries_by_name(pytester.path / "report.json")
    assert header["gil_returns"] == [
        {"where": WHERE_TEST, "nodeid": nodeid, "modules": ["gil_user_ext"]}
    ]
    assert tests["test_imports_it"]["gil_reenabled"] is True
