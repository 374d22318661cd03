"""No failure is lost, whatever the exception does when it is turned into text (issue 14)."""

from __future__ import annotations

import json

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


AFTER_BARRIER = """
import time
import pytest

def body(concurrency):
    if concurrency.worker == 0:
        time.sleep(0.2)  # the last to arrive: it releases the others, then fails at once
    concurrency.barrier()
    if concurrency.worker == 0:
        raise ValueError("worker 0 failed first")
    raise KeyError(concurrency.worker)

@pytest.mark.concurrent(workers=8, runs=2)
def test_threads(concurrency):
    body(concurrency)

@pytest.mark.concurrent(workers=4, runs=2, mode="processes")
def test_processes(concurrency):
    body(concurrency)

@pytest.mark.concurrent(workers=8, runs=2)
async def test_asyncio(concurrency):
    if concurrency.worker == 0:
        import asyncio
        await asyncio.sleep(0.2)
    await concurrency.barrier()
    if concurrency.worker == 0:
        raise ValueError("worker 0 failed first")
    raise KeyError(concurrency.worker)
"""


def test_failures_after_the_barrier_are_all_kept(pytester: pytest.Pytester, run_subprocess) -> None:
    """Every worker passed the barrier, then failed: the first failure must not turn the
    others, already released, into barrier collateral (dropped with their real errors)."""
    pytester.makepyfile(test_after=AFTER_BARRIER)
    result = run_subprocess("-p", "no:randomly", timeout=180)
    result.assert_outcomes(failed=3)
    for unit, workers, lines in (
        ("threads", 8, (9, 10)),
        ("processes", 4, (9, 10)),
        ("tasks", 8, (27, 28)),
    ):
        others = ", ".join(str(worker) for worker in range(1, workers))
        result.stdout.fnmatch_lines(
            [
                f"*FAILED in run 0 of 2 ({workers} {unit}, *): {workers} of {workers} calls failed",
                f"*  KeyError at test_after.py:{lines[1]} ({workers - 1} calls: workers {others})",
                f"*  ValueError at test_after.py:{lines[0]} (1 call: worker 0)",
            ]
        )
    result.stdout.no_fnmatch_line("*BarrierAborted*")
    result.stdout.no_fnmatch_line("*gave up at concurrency.barrier()*")


BEFORE_BARRIER = """
import pytest

def body(concurrency):
    if concurrency.worker == 0:
        raise ValueError("worker 0 never reaches the barrier")
    concurrency.barrier()

@pytest.mark.concurrent(workers=4, runs=2)
def test_threads(concurrency):
    body(concurrency)

@pytest.mark.concurrent(workers=4, runs=2, mode="processes")
def test_processes(concurrency):
    body(concurrency)

@pytest.mark.concurrent(workers=4, runs=2)
async def test_asyncio(concurrency):
    if concurrency.worker == 0:
        raise ValueError("worker 0 never reaches the barrier")
    await concurrency.barrier()
"""


def test_calls_that_gave_up_at_the_barrier_are_counted_apart(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_before=BEFORE_BARRIER)
    result = run_subprocess("-p", "no:randomly", "--concurrency-json=report.json", timeout=180)
    result.assert_outcomes(failed=3)
    for unit, line in (("threads", 5), ("processes", 5), ("tasks", 19)):
        result.stdout.fnmatch_lines(
            [
                f"*RACE DETECTED in run 0 of 2 (4 {unit}, *): 1 of 4 calls failed",
                f"*  ValueError at test_before.py:{line} (1 call: worker 0)",
                "*    worker 0 never reaches the barrier",
                "*  and 3 calls gave up at concurrency.barrier() because of it (workers 1, 2, 3): "
                "consequences, not causes",
            ]
        )
    report = json.loads((pytester.path / "report.json").read_text())
    entries = [entry for entry in report["tests"] if entry["kind"] == "concurrent"]
    assert [entry["collateral_workers"] for entry in entries] == [[1, 2, 3]] * 3
    assert all(len(entry["failures"]) == 1 for entry in entries)
