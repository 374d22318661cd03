"""No failure is lost, whatever the exception does when it is turned into text (issue 14)."""

from __future__ import annotations

import pytest

UNPRINTABLE = """
import pytest

class ApiError(Exception):
    def __init__(self, body):
        self.body = body

    def __str__(self):
        return "api error: " + self.body["error"]  # the body is a string: TypeError

def fail():
    raise ApiError("<html>502</html>")

@pytest.mark.concurrent(workers=2, runs=3)
async def test_asyncio():
    fail()

@pytest.mark.concurrent(workers=2, runs=3)
def test_threads():
    fail()

@pytest.mark.concurrent(workers=2, runs=3, mode="processes")
def test_processes():
    fail()

def test_harness(concurrency):
    for run in concurrency.runs(3):
        run(fail, workers=2)

async def test_async_harness(concurrency):
    async def afail():
        fail()
    for run in concurrency.runs(3):
        await run(afail, workers=2)
"""


def test_an_exception_whose_str_raises_still_fails_the_test_in_every_mode_and_form(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_unprintable=UNPRINTABLE)
    result = run_subprocess("-p", "no:randomly", timeout=180)
    result.assert_outcomes(failed=5)
    for name in ("asyncio", "threads", "processes", "harness", "async_harness"):
        result.stdout.fnmatch_lines([f"  test_unprintable.py::test_{name}: failed in run 0 *"])
    # The origin is the raising line of the user's code, for every worker's call.
    assert result.stdout.str().count("test_unprintable.ApiError at test_unprintable.py:11") >= 5
    result.stdout.fnmatch_lines(
        ["*<unprintable ApiError object: str() raised TypeError: string indices must be*"]
    )
    result.stdout.no_fnmatch_line("*PytestUnhandledThreadExceptionWarning*")
    result.stdout.no_fnmatch_line("*HANG*")
    result.stdout.no_fnmatch_line("*WorkerCrashed*")
