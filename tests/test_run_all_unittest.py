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


RACE = """
import unittest

class Counter:
    def __init__(self):
        self.value = 0

    def add(self):
        value = self.value
        self.check()
        self.value = value + 1

    def check(self):
        return self.value

SHARED = Counter()

class TestCounter(unittest.TestCase):
    def setUp(self):
        self.before = SHARED.value

    def test_lost_update(self):
        for _ in range(50):
            SHARED.add()
        self.assertGreaterEqual(SHARED.value - self.before, 50)
"""


def test_a_race_in_a_testcase_method_is_found_and_replayed(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_counter=RACE)
    result = run_all(run_subprocess, pytester, "--concurrency-seed=5", "--concurrency-runs=50")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*RACE DETECTED in run *",
            "*AssertionError at test_counter.py:* (*",
            "*reproduce: pytest test_counter.py::TestCounter::test_lost_update"
            " --concurrency-seed=5 --concurrency-workers=3 --concurrency-runs=50"
            " --concurrency-all",
        ]
    )
    (entry,) = report(pytester)["tests"]
    assert entry["failure_class"] == "concurrent"


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
