"""--concurrency-all runs unittest.TestCase methods concurrently (issue 17): one instance per
worker call, setUp / the method / tearDown / cleanups in each; what it cannot run so is run
once, by unittest, and named with its reason."""

from __future__ import annotations

import json

import pytest

from pytest_concurrency import messages

CASES = """
import threading
import unittest

SEEN = {"setups": set(), "teardowns": set(), "cleanups": set(), "instances": set(),
        "class_setups": 0}

class TestCases(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        SEEN["class_setups"] += 1

    def setUp(self):
        self.mine = threading.current_thread().name
        SEEN["setups"].add(self.mine)
        self.addCleanup(SEEN["cleanups"].add, self.mine)

    def tearDown(self):
        SEEN["teardowns"].add(self.mine)

    def test_runs_in_workers_each_on_its_own_instance(self):
        SEEN["instances"].add(id(self))
        assert self.mine == threading.current_thread().name  # no other worker's setUp

class TestAfter(unittest.TestCase):
    def test_what_the_workers_did(self):
        workers = {name for name in SEEN["setups"] if name.startswith("concurrency-worker")}
        assert len(workers) == 3, SEEN
        assert "MainThread" in SEEN["setups"]  # the plain run
        assert SEEN["teardowns"] == SEEN["setups"] == SEEN["cleanups"]
        assert len(SEEN["instances"]) >= 4
        assert SEEN["class_setups"] == 1
"""


def run_all(run_subprocess, pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    out = pytester.path / "report.json"
    return run_subprocess(
        "-p", "no:randomly", "--concurrency-all", "--concurrency-workers=3",
        f"--concurrency-json={out}", *args,
    )  # fmt: skip


def report(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "report.json").read_text())


def test_a_testcase_method_runs_concurrently_with_an_instance_per_worker_call(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_cases=CASES)
    result = run_all(run_subprocess, pytester)
    result.assert_outcomes(passed=2)
    tests = {entry["nodeid"].split("::", 1)[1]: entry for entry in report(pytester)["tests"]}
    entry = tests["TestCases::test_runs_in_workers_each_on_its_own_instance"]
    assert entry["runs_done"] >= 1 and entry["workers"] == 3
    assert "audit" in entry


ONLY_IN_WORKERS = """
import threading
import unittest

class TestOnlyInWorkers(unittest.TestCase):
    def setUp(self):
        self.thread = threading.current_thread()

    def test_passes_plainly_fails_in_workers(self):
        self.assertIs(self.thread, threading.main_thread())
"""


def test_a_failure_only_in_workers_is_reported_classified_and_replayable(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_workers=ONLY_IN_WORKERS)
    result = run_all(run_subprocess, pytester, "--concurrency-seed=5")
    result.assert_outcomes(failed=1)
    nodeid = "test_workers.py::TestOnlyInWorkers::test_passes_plainly_fails_in_workers"
    reproduce = (
        f"pytest {nodeid} --concurrency-seed=5 --concurrency-workers=3 --concurrency-all"
        " --concurrency-replay-runs=100"
    )
    result.stdout.fnmatch_lines(
        [
            "*FAILED in run 0 of its audit (3 threads, seed *): 3 of 3 calls failed",
            "*AssertionError at test_workers.py:9 (3 calls: workers 0, 1, 2)",
            "*" + messages.CONCURRENT_FAILURE_NOTE.strip(),
            f"*reproduce: {reproduce}",
        ]
    )
    (entry,) = report(pytester)["tests"]
    assert entry["failure_class"] == "concurrent"
    replay = run_subprocess("-p", "no:randomly", *reproduce.split()[1:])
    replay.assert_outcomes(failed=1)
    replay.stdout.fnmatch_lines(["*FAILED in run 0 of 100 (3 threads, seed *)*"])


EDGES = """
import unittest

class TestEdges(unittest.TestCase):
    def test_skips_itself(self):
        self.skipTest("not on this platform")

    @unittest.expectedFailure
    def test_known_bug(self):
        self.assertEqual(1, 2)

    @unittest.skip("never")
    def test_skipped(self):
        raise AssertionError("must not run")

    def test_fails_on_its_own(self):
        self.assertEqual(1, 2)

@unittest.skip("the whole class")
class TestSkippedClass(unittest.TestCase):
    def test_inside(self):
        raise AssertionError("must not run")

class TestAsync(unittest.IsolatedAsyncioTestCase):
    async def test_coroutine(self):
        pass
"""


def test_what_a_testcase_cannot_run_concurrently_is_named_with_its_reason(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_edges=EDGES)
    result = run_all(run_subprocess, pytester)
    result.assert_outcomes(passed=1, failed=1, skipped=3, xfailed=1)
    result.stdout.no_fnmatch_line("*must not run*")
    reasons = {
        entry["nodeid"].split("::", 1)[1]: entry["reason"] for entry in report(pytester)["serial"]
    }
    assert reasons == {
        "TestEdges::test_skips_itself": messages.SERIAL_SKIPPED_PLAIN,
        "TestEdges::test_known_bug": messages.SERIAL_UNITTEST_EXPECTED_FAILURE,
        "TestEdges::test_skipped": messages.SERIAL_UNITTEST_SKIPPED,
        "TestEdges::test_fails_on_its_own": messages.SERIAL_FAILED_PLAIN,
        "TestSkippedClass::test_inside": messages.SERIAL_UNITTEST_SKIPPED,
        "TestAsync::test_coroutine": messages.SERIAL_UNITTEST_ASYNC,
    }
    result.stdout.fnmatch_lines(["*" + messages.OWN_FAILURE_NOTE])


STYLES = '''
import pytest

def double(x):
    """
    >>> double(2)
    4
    """
    return 2 * x

@pytest.mark.parametrize("value", [1, 2, 3])
def test_parametrized(value):
    assert double(value) == value + value

class TestPlainClass:
    def test_method(self):
        assert double(0) == 0
'''


def test_parametrized_tests_and_classes_are_audited_and_a_doctest_is_named(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_styles=STYLES)
    result = run_all(run_subprocess, pytester, "--doctest-modules")
    result.assert_outcomes(passed=5)
    document = report(pytester)
    audited = {entry["nodeid"].split("::", 1)[1] for entry in document["tests"]}
    assert audited == {
        "test_parametrized[1]",
        "test_parametrized[2]",
        "test_parametrized[3]",
        "TestPlainClass::test_method",
    }
    assert all("audit" in entry for entry in document["tests"])
    assert [entry["reason"] for entry in document["serial"]] == [messages.SERIAL_DOCTEST]


PROCESSES = """
import os
import unittest

class TestInWorkerProcesses(unittest.TestCase):
    def setUp(self):
        self.pid = os.getpid()

    def test_runs_in_its_own_process(self):
        self.assertEqual(self.pid, os.getpid())
"""


def test_a_testcase_method_runs_in_process_mode_too(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_processes=PROCESSES)
    result = run_all(run_subprocess, pytester, "--concurrency-mode=processes")
    result.assert_outcomes(passed=1)
    (entry,) = report(pytester)["tests"]
    assert entry["mode"] == "processes" and entry["runs_done"] >= 1
