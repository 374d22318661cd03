"""The failing-seed memory: a race found by one session is tried first by the next (issue 14).

The body fails in run 3 of the series seed the first session drew (kept in a file), and never
with any other seed: a plain second session draws a new seed, so it finds the failure again
only by trying the remembered seed first.
"""

from __future__ import annotations

import json

import pytest

SEED_BOUND = """
import pathlib
import pytest

FIRST = pathlib.Path(__file__).with_name("first-seed.txt")

@pytest.mark.concurrent(workers=2, runs=10)
def test_rare(concurrency):
    if not FIRST.exists():
        FIRST.write_text(str(concurrency.seed))
    assert not (concurrency.run == 3 and concurrency.seed == int(FIRST.read_text())), "the race"
"""

# the cache is on: no "-p no:cacheprovider"
ISOLATION = ("-p", "no:run-parallel", "-p", "no:asyncio", "-p", "no:randomly")


def session(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*ISOLATION, *args, timeout=120)


def memory(pytester: pytest.Pytester) -> dict[str, dict[str, object]]:
    path = pytester.path / ".pytest_cache" / "v" / "concurrency" / "failing_seeds"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_a_race_found_once_is_found_again_by_the_next_plain_session(
    pytester: pytest.Pytester, xdist: bool
) -> None:
    pytester.makepyfile(test_rare=SEED_BOUND)
    first = session(pytester, "test_rare.py::test_rare", *(("-n", "2") if xdist else ()))
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["*in run 3 of 10 (2 threads, *): 2 of 8 calls failed"])
    remembered = memory(pytester)["test_rare.py::test_rare"]
    assert remembered["run"] == 3

    again = session(
        pytester, "test_rare.py::test_rare"
    )  # a new session seed: only the memory finds it
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(
        [
            "concurrency: failing-seed memory: 1 test failed in an earlier session; each is "
            "tried first with the seed it failed with, when it runs with no seed of its own "
            "(--concurrency-remember=false turns this off)",
            "*in run 3 of 4 (2 threads, *): 2 of 8 calls failed",
            "*found again with the seed remembered from an earlier session's failure in run 3*",
        ]
    )

    off = session(pytester, "test_rare.py::test_rare", "--concurrency-remember=false")
    off.assert_outcomes(passed=1)  # a new seed, nothing remembered tried: the race hides
    assert "failing-seed memory" not in off.stdout.str()


def test_a_test_that_passes_with_its_remembered_seed_is_forgotten(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_rare=SEED_BOUND)
    session(pytester, "test_rare.py::test_rare").assert_outcomes(failed=1)
    assert "test_rare.py::test_rare" in memory(pytester)
    (pytester.path / "first-seed.txt").write_text("-1")  # the race is fixed
    session(pytester, "test_rare.py::test_rare").assert_outcomes(passed=1)
    assert memory(pytester) == {}
    quiet = session(pytester, "test_rare.py::test_rare")
    assert "failing-seed memory" not in quiet.stdout.str()


def test_a_given_seed_is_used_as_given_and_its_failure_is_remembered(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_rare=SEED_BOUND)
    session(pytester, "test_rare.py::test_rare").assert_outcomes(failed=1)
    given = session(pytester, "test_rare.py::test_rare", "--concurrency-seed=1")
    given.assert_outcomes(passed=1)  # seed 1 draws another series seed: no memory tried
    assert "failing-seed memory" not in given.stdout.str()
    assert "test_rare.py::test_rare" in memory(pytester)  # a given seed's pass forgets nothing


def test_the_harness_runs_with_its_remembered_seed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_harness="""
        import pathlib

        FIRST = pathlib.Path(__file__).with_name("harness-seed.txt")

        def test_harness(concurrency):
            if not FIRST.exists():
                FIRST.write_text(str(concurrency.seed))
            bound = int(FIRST.read_text())
            for run in concurrency.runs(10):
                run(lambda: None, workers=2)
                assert not (run.index == 3 and concurrency.seed == bound), "the race"
        """
    )
    session(pytester, "test_harness.py").assert_outcomes(failed=1)
    again = session(pytester, "test_harness.py")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*failing-seed memory: 1 test*", "*FAILED after run 3 of 10*"])


def test_a_crash_is_remembered_and_crashes_again_in_the_next_session(
    pytester: pytest.Pytester,
) -> None:
    """An isolated test that segfaults with one series seed only: its run died with the
    interpreter, so the seed is remembered up to the last planned run."""
    pytester.makepyfile(
        test_crash="""
        import ctypes
        import pathlib
        import pytest

        FIRST = pathlib.Path(__file__).with_name("crash-seed.txt")

        @pytest.mark.concurrent(workers=2, runs=4, isolate=True)
        def test_segfault(concurrency):
            if not FIRST.exists():
                FIRST.write_text(str(concurrency.seed))
            if concurrency.run == 2 and concurrency.seed == int(FIRST.read_text()):
                ctypes.string_at(0)
        """
    )
    first = session(pytester, "test_crash.py")
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["*CRASHED*"])
    assert memory(pytester)["test_crash.py::test_segfault"]["run"] == 3

    again = session(pytester, "test_crash.py")  # a new session seed: only the memory finds it
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*failing-seed memory: 1 test*", "*CRASHED*"])
