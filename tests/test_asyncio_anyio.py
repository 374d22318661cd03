"""Acceptance: anyio's asyncio backend under the marker and the harness (issue 19): task
groups, ``anyio.sleep`` on the virtual clock, ``anyio.to_thread.run_sync`` (its worker threads
are waited for in real time), a race across an ``anyio.sleep`` found and its locked twin clean;
anyio's own pytest plugin (registered by anyio) keeps running the tests it marks."""

from __future__ import annotations

import pytest

pytest.importorskip("anyio")  # the test extra installs it: CI runs this file

ANYIO_TESTS = """
import threading

import anyio
import pytest


class Counter:
    def __init__(self):
        self.value = 0
        self.lock = anyio.Lock()

    async def add(self):
        seen = self.value
        await anyio.sleep(0.01)  # the other task reads the same value meanwhile
        self.value = seen + 1

    async def add_locked(self):
        async with self.lock:
            await self.add()


def in_a_thread(number):
    assert threading.current_thread() is not threading.main_thread()
    return number * 2


@pytest.mark.concurrent(workers=3, runs=5)
async def test_task_group_threads_and_sleep():
    results = []

    async def one(number):
        results.append(await anyio.to_thread.run_sync(in_a_thread, number))
        await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        for number in range(3):
            group.start_soon(one, number)
    assert sorted(results) == [0, 2, 4]


@pytest.mark.concurrent(workers=2, runs=20)
async def test_lost_update():
    counter = Counter()
    async with anyio.create_task_group() as group:
        group.start_soon(counter.add)
        group.start_soon(counter.add)
    assert counter.value == 2


@pytest.mark.concurrent(workers=2, runs=20)
async def test_locked_twin():
    counter = Counter()
    async with anyio.create_task_group() as group:
        group.start_soon(counter.add_locked)
        group.start_soon(counter.add_locked)
    assert counter.value == 2


async def test_harness(concurrency):
    for run in concurrency.runs(5):
        got = await run(lambda: anyio.to_thread.run_sync(in_a_thread, 21), workers=3)
        assert got == [42, 42, 42]
        await anyio.sleep(0.01)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_anyio_plugin_still_runs_its_own():
    await anyio.sleep(0.01)
"""


def test_anyio_on_the_asyncio_backend_under_the_marker_and_the_harness(
    pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_anyio=ANYIO_TESTS)
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    result = run_subprocess("-p", "anyio", "--concurrency-seed=3", "-W", "error", "-rA")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(
        ["*FAILED in run * (2 tasks, seed 3*", "*AssertionError at test_anyio.py:* (2 calls*"]
    )
    result.stdout.fnmatch_lines(["PASSED test_anyio.py::test_anyio_plugin_still_runs_its_own*"])
    assert "FAILED test_anyio.py::test_lost_update" in result.stdout.str()
