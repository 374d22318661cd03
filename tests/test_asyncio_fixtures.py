"""Acceptance: pytest-asyncio's async fixtures and a concurrent async body share one loop.

Issue 14, case 4: a loopback server made by a pytest-asyncio fixture hung a marked test at
``await reader.readline()`` (the server's loop stood still while the plugin's ran the body),
and a future made in a fixture failed as "attached to a different loop". Now the body's tasks
run on the loop pytest-asyncio ran the fixtures on, in the seeded order; fixtures on several
loops are refused at setup with the fix. pytest-asyncio is enabled in these inner runs (the
suite's ``run``/``run_subprocess`` fixtures disable it), in strict and auto mode.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from pathlib import Path

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.outcomes import RunRecord
from pytest_concurrency.runners import aio_loop, make_perturbation, make_runner
from pytest_concurrency.runners.base import RunPlan, Series

pytest.importorskip("pytest_asyncio")

SUBPROCESS_SECONDS = 120
"""Bounds every inner pytest: the code before the fix hangs there until the run deadline."""

MODES = ["strict", "auto"]
LOOP_SCOPES = ["function", "module", "session"]

ECHO_SERVER = """
import asyncio
import pytest
import pytest_asyncio


async def echo(reader, writer):
    line = await reader.readline()
    writer.write(line)
    await writer.drain()
    writer.close()


async def roundtrip(port, data):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data + b"\\n")
    answer = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return answer


@{fixture}
async def server():
    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
"""

ECHO = (
    ECHO_SERVER
    + """

LOOPS = []


@{fixture}
async def fixture_loop():
    LOOPS.append(asyncio.get_running_loop())
    return asyncio.get_running_loop()


@pytest.mark.concurrent(workers=4, runs=3)
async def test_echo(server, fixture_loop):
    assert asyncio.get_running_loop() is fixture_loop
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"hi\\n")
    assert await reader.readline() == b"hi\\n"
    writer.close()
    await writer.wait_closed()


async def test_harness_in_an_async_test(server, concurrency):
    for run in concurrency.runs(3):
        assert await run(lambda: roundtrip(server, b"a"), workers=3) == [b"a\\n"] * 3


def test_asyncio_runs_of_a_sync_test(concurrency, server):  # server: torn down first
    for run in concurrency.runs(2, mode="asyncio"):
        assert run(lambda: roundtrip(server, b"s"), workers=2) == [b"s\\n"] * 2


@pytest.mark.asyncio(loop_scope="{scope}")
async def test_pytest_asyncio_gets_its_loop_back_as_it_was(fixture_loop):
    loop = asyncio.get_running_loop()
    assert loop is fixture_loop and not loop.is_closed()
    assert "_run_once" not in vars(loop)  # the seeded order went with the concurrent test
    assert len(set(map(id, LOOPS))) == (len(LOOPS) if "{scope}" == "function" else 1)
"""
)


def run_inner(pytester: pytest.Pytester, mode: str, *args: str) -> pytest.RunResult:
    """pytest in a subprocess with pytest-asyncio on, in ``mode``, bounded in time."""
    return pytester.runpytest_subprocess(
        "-p",
        "no:run-parallel",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-p",
        "asyncio",
        "-o",
        f"asyncio_mode={mode}",
        "-W",
        "error",
        *args,
        timeout=SUBPROCESS_SECONDS,
    )


def fixture_decorator(mode: str) -> str:
    """In auto mode a plain ``@pytest.fixture`` async def is pytest-asyncio's too."""
    return "pytest.fixture" if mode == "auto" else "pytest_asyncio.fixture"


@pytest.mark.parametrize("scope", LOOP_SCOPES)
@pytest.mark.parametrize("mode", MODES)
def test_an_echo_server_fixture_answers_a_concurrent_body(
    pytester: pytest.Pytester, mode: str, scope: str
) -> None:
    pytester.makepyfile(test_echo=ECHO.format(fixture=fixture_decorator(mode), scope=scope))
    result = run_inner(pytester, mode, "-o", f"asyncio_default_fixture_loop_scope={scope}", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([f"*{messages.ASYNCIO_FIXTURES_HEADER}*"])
    assert "never awaited" not in result.stdout.str() + result.stderr.str()


RUN_ALL = (
    ECHO_SERVER
    + """

async def test_theirs(server):
    assert await roundtrip(server, b"all") == b"all\\n"
"""
)


def test_run_all_runs_a_pytest_asyncio_test_on_its_fixtures_loop(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_all=RUN_ALL.format(fixture="pytest.fixture"))
    result = run_inner(
        pytester,
        "auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "--concurrency-all",
        "--concurrency-runs=3",
        "--concurrency-workers=3",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 concurrent tests, 3 runs, 9 calls; 0 with failures*"])


FUTURE = """
import asyncio
import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def ready():
    future = asyncio.get_running_loop().create_future()
    yield future
    assert future.result() == "ready"


@pytest_asyncio.fixture
async def lock():
    lock = asyncio.Lock()
    async with lock:  # bound to the fixture's loop from here on
        pass
    return lock


@pytest.mark.concurrent(workers=3, runs=3)
async def test_awaits_the_future_of_a_fixture(ready, lock):
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: ready.done() or ready.set_result("ready"))
    assert await ready == "ready"
    async with lock:
        await asyncio.sleep(0)
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_future_made_in_a_fixture_is_awaited_in_a_concurrent_body(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(test_future=FUTURE)
    result = run_inner(pytester, mode, "-o", "asyncio_default_fixture_loop_scope=function")
    result.assert_outcomes(passed=1)
    assert "attached to a different loop" not in result.stdout.str()


RACE = (
    ECHO_SERVER
    + """

@{fixture}
async def sessions():
    return {{}}


@pytest.mark.concurrent(workers=2, runs=5)
async def test_a_session_is_opened_once(server, sessions, concurrency):
    key = concurrency.run
    if key not in sessions:  # check ...
        await roundtrip(server, b"open")  # ... await the fixture's server ...
        sessions[key] = sessions.get(key, 0) + 1  # ... act on what was checked before
    assert sessions[key] == 1
"""
)


@pytest.mark.parametrize("mode", MODES)
def test_a_race_across_an_await_is_still_found_and_replays(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(test_race=RACE.format(fixture=fixture_decorator(mode)))
    args = ("-o", "asyncio_default_fixture_loop_scope=function")
    result = run_inner(pytester, mode, *args)
    result.assert_outcomes(failed=1)
    note = messages.ASYNCIO_FIXTURES_LOOP_NOTE.format(
        scope="function", names="server, sessions", order=messages.ASYNCIO_ORDER_SEEDED
    )
    result.stdout.fnmatch_lines(
        [
            "*RACE DETECTED in run 0 of 5 (2 tasks, seed *): 1 of 2 calls failed*",
            "*AssertionError at test_race.py:* (1 call: worker *)*",
            f"*{note.strip()}*",
        ]
    )
    # run 0 on pytest-asyncio's loop kept FIFO order on the real clock: it is the answer
    result.stdout.fnmatch_lines(["*" + messages.FAILS_IN_PLAIN_RUN])
    assert "HANG" not in result.stdout.str()
    line = next(line for line in result.stdout.lines if "reproduce: pytest " in line)
    command = line.split("reproduce: pytest ", 1)[1].split()
    again = run_inner(pytester, mode, *args, *command)
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*AssertionError at test_race.py:* (1 call: worker *)*"])


HANG = """
import asyncio
import pytest
import pytest_asyncio

TORN_DOWN = []


@pytest_asyncio.fixture
async def gate():
    event = asyncio.Event()
    yield event
    TORN_DOWN.append(asyncio.get_running_loop())


@pytest.mark.concurrent(workers=2, runs=3, timeout=1)
async def test_waits_for_a_gate_nobody_opens(gate, concurrency):
    if concurrency.worker == 1:
        await gate.wait()


def test_the_fixture_was_torn_down_on_its_loop():
    assert len(TORN_DOWN) == 1
"""


def test_a_hang_on_the_fixtures_loop_is_reported_and_the_loop_given_back(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_hang=HANG)
    result = run_inner(pytester, "strict", "-o", "asyncio_default_fixture_loop_scope=function")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*HANG in run 0 of 3 (2 tasks, seed *): worker 1 did not finish within 1s*",
            "*worker 1 is stuck here:*",
            "*await gate.wait()*",
            "*the tasks ran on pytest-asyncio's event loop of loop_scope 'function'*",
        ]
    )


SEVERAL_LOOPS = """
import asyncio
import pytest
import pytest_asyncio

SET_UP = []


@pytest_asyncio.fixture(loop_scope="module")
async def pool():
    SET_UP.append("pool")
    return asyncio.Lock()


@pytest_asyncio.fixture(loop_scope="function")
async def request_id():
    SET_UP.append("request_id")
    return 7


@pytest.mark.concurrent(workers=2, runs=2)
async def test_on_two_loops(pool, request_id):
    pass


def test_no_fixture_ran():
    assert SET_UP == []
"""


@pytest.mark.parametrize("mode", MODES)
def test_fixtures_on_several_loops_are_refused_at_setup_with_the_fix(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(test_loops=SEVERAL_LOOPS)
    result = run_inner(pytester, mode, "-o", "asyncio_default_fixture_loop_scope=function")
    result.assert_outcomes(errors=1, passed=1)
    refusal = messages.ASYNCIO_FIXTURES_ON_SEVERAL_LOOPS.format(
        nodeid="test_loops.py::test_on_two_loops",
        fixtures="pool on loop_scope 'module', request_id on loop_scope 'function'",
        scope="module",
    )
    assert refusal in result.stdout.str()


def test_without_pytest_asyncio_the_header_says_nothing_of_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess(
        "-p", "no:asyncio", "-p", "no:cacheprovider", timeout=SUBPROCESS_SECONDS
    )
    result.assert_outcomes(passed=1)
    assert messages.ASYNCIO_FIXTURES_HEADER not in result.stdout.str()


# -- the borrowed loop itself (runners/aio_loop.AdoptedLoop) -----------------------------------


def traces(loop: asyncio.AbstractEventLoop | None, seed: int, runs: int = 8) -> list[str]:
    """The interleaving of every run of a series of 4 tasks, on ``loop`` (borrowed) or on the
    plugin's own loop (None)."""
    perturbation = make_perturbation(enabled=True, roots=[Path(__file__).parent], seed=seed)
    options = {"loop": loop} if loop is not None else {}
    runner = make_runner("asyncio", 4, perturbation=perturbation, options=options)
    log: list[str] = []
    found: list[str] = []

    async def step(worker: int) -> None:
        for i in range(5):
            log.append(f"{worker}{i}")
            await asyncio.sleep(0)

    def run_done(record: RunRecord) -> bool:
        assert not record.failures and not record.hung_workers, record
        found.append("".join(log))
        log.clear()
        return True

    calls = [functools.partial(step, worker) for worker in range(4)]
    try:
        runner.run_series(Series(calls, RunPlan(runs), seed=seed, timeout=10, on_run_done=run_done))
    finally:
        runner.close()
    return found


FIFO = "".join(f"{w}{i}" for i in range(5) for w in range(4))


def test_a_borrowed_loop_runs_the_seeded_schedule_of_the_plugins_own_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        for seed in (3, 4):
            borrowed = traces(loop, seed)
            assert borrowed == traces(None, seed)  # seeded as ours: one seed, one schedule
            assert borrowed[0] == FIFO and len(set(borrowed[1:])) > 1
        assert "_run_once" not in vars(loop) and aio_loop.ADOPTED == {}
        assert not loop.is_running() and not loop.is_closed()
        assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"
    finally:
        loop.close()


def test_a_borrowed_loop_gets_back_the_run_once_it_had() -> None:
    loop = asyncio.new_event_loop()
    own = loop._run_once  # type: ignore[attr-defined]
    loop._run_once = own  # type: ignore[attr-defined]  # someone's instance attribute
    try:
        traces(loop, seed=5, runs=3)
        assert vars(loop)["_run_once"] is own
    finally:
        loop.close()


def test_a_loop_that_cannot_be_ordered_runs_fifo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio_loop, "can_order", lambda loop: False)
    loop = asyncio.new_event_loop()
    try:
        assert traces(loop, seed=3, runs=4) == [FIFO] * 4
        assert "_run_once" not in vars(loop)
    finally:
        loop.close()


@pytest.mark.parametrize("orderable", [True, False])
def test_a_borrowed_loop_that_a_sync_call_blocks_is_reported_and_given_back(
    monkeypatch: pytest.MonkeyPatch, orderable: bool
) -> None:
    """The blocked-loop watch works on a borrowed loop (a timer marks the turns of one that
    cannot be ordered); once the call returns, the loop goes back to its owner, usable."""
    if not orderable:
        monkeypatch.setattr(aio_loop, "can_order", lambda loop: False)
    loop = asyncio.new_event_loop()
    records: list[RunRecord] = []

    async def blocks() -> None:
        time.sleep(1.8)

    def run_done(record: RunRecord) -> bool:
        records.append(record)
        return True

    runner = make_runner("asyncio", 1, options={"loop": loop})
    started = time.monotonic()
    try:
        runner.run_series(Series([blocks], RunPlan(3), seed=1, timeout=0.3, on_run_done=run_done))
        runner.close()
        assert time.monotonic() - started < 1.8 + aio_loop.CANCEL_SECONDS + 1
        assert len(records) == 1 and records[0].hung_workers == [0]
        assert "the event loop was blocked" in records[0].stacks[0]
        assert not loop.is_running() and "_run_once" not in vars(loop)
        assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"
    finally:
        loop.close()


ORDER = """
import asyncio
import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def served():
    return asyncio.get_running_loop()


@pytest.mark.concurrent(workers=1, runs=30)
async def test_first_come_first_served(served):
    assert asyncio.get_running_loop() is served
    order = []

    async def arrive(name):
        order.append(name)

    await asyncio.gather(arrive("a"), arrive("b"))
    assert order == ["a", "b"]  # FIFO says so; a seeded order may not
"""


def test_a_failure_on_the_fixtures_loop_is_rerun_there_in_fifo_order(
    pytester: pytest.Pytester,
) -> None:
    """Found in a seeded order on pytest-asyncio's loop (its own clock, the real one), the
    failure is rerun once on that loop in FIFO order, where it passes, and the report says the
    failure needs the seeded task order."""
    pytester.makepyfile(test_order=ORDER)
    args = ("-o", "asyncio_default_fixture_loop_scope=function", "--concurrency-seed=3")
    result = run_inner(pytester, "strict", *args, "--concurrency-json=report.json")
    result.assert_outcomes(failed=1)
    needs = messages.PASSES_WITHOUT_REORDERING.format(changes=messages.CHANGE_TASK_ORDER)
    result.stdout.fnmatch_lines(["*RACE DETECTED in run *", "*" + needs])
    (entry,) = json.loads((pytester.path / "report.json").read_text())["tests"]
    assert entry["clock"] == "real" and entry["failing_run"] > 0
    assert (entry["fails_without_reordering"], entry["without_reordering_from"]) == (False, "rerun")
