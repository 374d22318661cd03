"""Acceptance: mode="asyncio", tasks on the plugin's own loop ordered from the seed."""

from __future__ import annotations

import asyncio
import functools
import json
from collections import deque
from pathlib import Path

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.outcomes import RunRecord
from pytest_concurrency.runners import aio, aio_loop, make_perturbation, make_runner
from pytest_concurrency.runners.base import RunPlan, Series

SHOP = """
import asyncio
import pytest

class Shop:
    '''Sells its last item: check the stock, charge the card (an await), take the item.'''

    def __init__(self):
        self.stock = 1
        self.lock = asyncio.Lock()

    async def buy(self, arrive_after=0):
        for _ in range(arrive_after):         # a later customer
            await asyncio.sleep(0)
        await asyncio.sleep(0)                # look the price up
        if self.stock > 0:                    # check ...
            await asyncio.sleep(0)            # ... charge the card ...
            self.stock -= 1                   # ... act on a stale check

    async def buy_locked(self, arrive_after=0):
        async with self.lock:
            await self.buy(arrive_after)

async def test_gathered(concurrency):
    for run in concurrency.runs(50):
        shop = Shop()
        await run(shop.buy, workers=4)
        assert shop.stock >= 0

async def test_staggered(concurrency):
    for run in concurrency.runs(200):
        shop = Shop()
        await run(lambda: shop.buy(0), lambda: shop.buy(2))
        assert shop.stock >= 0, f"oversold in run {run.index}"

async def test_staggered_locked(concurrency):
    for run in concurrency.runs(60):
        shop = Shop()
        await run(lambda: shop.buy_locked(0), lambda: shop.buy_locked(2))
        assert shop.stock == 0

@pytest.mark.concurrent(workers=4, runs=40)
async def test_marked_locked(concurrency):
    await SHARED.buy_locked(concurrency.worker)
    assert SHARED.stock >= 0

SHARED = Shop()
SHARED.stock = 10**6
"""


def test_check_then_act_across_an_await_is_found_gathered_and_staggered(pytester, run) -> None:
    pytester.makepyfile(test_shop=SHOP)
    result = run("-v")
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*::test_gathered FAILED*",
            "*::test_staggered FAILED*",
            "*::test_staggered_locked PASSED*",
            "*::test_marked_locked PASSED*",
        ]
    )
    # gathered: plain FIFO order (run 0) already interleaves the check and the act
    result.stdout.fnmatch_lines(["*FAILED after run 0 of 50 (4 tasks, seed *)*"])
    # staggered: only a run that holds a task back (even runs from 2) can show it
    failing = [line for line in result.stdout.lines if "AssertionError: oversold in run" in line]
    assert failing, result.stdout.str()
    index = int(failing[0].rsplit(" ", 1)[1])
    assert index >= 2 and index % 2 == 0
    # the printed line replays the same schedule: the same run fails again
    seed = next(
        line
        for line in result.stdout.lines
        if "reproduce: pytest test_shop.py::test_staggered" in line
    ).rsplit("=", 1)[1]
    again = run(f"--concurrency-seed={seed}", "test_shop.py::test_staggered")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines([f"*AssertionError: oversold in run {index}"])


def test_a_fifo_loop_never_shows_the_staggered_race() -> None:
    """The baseline the issue names: ``asyncio.gather`` on a fresh loop, many times."""

    class Shop:
        stock = 1

        async def buy(self, arrive_after: int) -> None:
            for _ in range(arrive_after + 1):
                await asyncio.sleep(0)
            if self.stock > 0:
                await asyncio.sleep(0)
                self.stock -= 1

    async def both(shop: Shop) -> None:
        await asyncio.gather(shop.buy(0), shop.buy(2))

    for _ in range(200):
        shop = Shop()
        asyncio.run(both(shop))
        assert shop.stock == 0


TRACE = """
import asyncio
import json
import os

async def step(log, worker):
    for i in range(6):
        log.append(f"{worker}{i}")
        await asyncio.sleep(0)

async def test_trace(concurrency):
    traces = []
    for run in concurrency.runs(12):
        log = []
        await run(lambda: step(log, concurrency.worker), workers=4)
        traces.append("".join(log))
    with open(os.environ["TRACE_FILE"], "a") as out:
        out.write(json.dumps(traces) + "\\n")
"""


def test_one_seed_is_one_schedule_and_another_seed_another(
    pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_trace=TRACE)
    trace_file = pytester.path / "traces.jsonl"
    monkeypatch.setenv("TRACE_FILE", str(trace_file))
    for seed in ("11", "11", "12"):
        run(f"--concurrency-seed={seed}").assert_outcomes(passed=1)
    first, again, other = (json.loads(line) for line in trace_file.read_text().splitlines())
    assert first == again  # same seed: the same interleaving, run by run
    assert first != other  # another seed: another schedule
    fifo = "".join(f"{w}{i}" for i in range(6) for w in range(4))
    assert first[0] == fifo == other[0]  # run 0 is plain FIFO order
    assert len(set(first[1:])) > 1


def asyncio_traces(*, perturb: bool, seed: int, runs: int = 12, workers: int = 4) -> list[str]:
    """The interleaving of every run of a series, straight from the runner ``make_runner``
    builds for asyncio mode, with perturbation on or off (as the plugin makes it)."""
    perturbation = make_perturbation(enabled=perturb, roots=[Path(__file__).parent], seed=seed)
    runner = make_runner("asyncio", workers, perturbation=perturbation)
    log: list[str] = []
    traces: list[str] = []

    async def step(worker: int) -> None:
        for i in range(6):
            log.append(f"{worker}{i}")
            await asyncio.sleep(0)

    def run_done(record: RunRecord) -> bool:
        assert not record.failures, record.failures
        traces.append("".join(log))
        log.clear()
        return True

    calls = [functools.partial(step, worker) for worker in range(workers)]
    series = Series(calls, RunPlan(runs), seed=seed, timeout=10, on_run_done=run_done)
    try:
        runner.run_series(series)
    finally:
        runner.close()
    assert len(traces) == runs
    return traces


FIFO_TRACE = "".join(f"{w}{i}" for i in range(6) for w in range(4))


def test_without_perturbation_every_asyncio_run_keeps_fifo_order() -> None:
    """``perturb=False`` in asyncio mode: no seeded order, so tasks start and resume in FIFO
    order (worker 0, 1, 2, ...) in every run, whatever the seed."""
    for seed in (11, 12):
        assert asyncio_traces(perturb=False, seed=seed) == [FIFO_TRACE] * 12
    # the control: with perturbation on, the seeded runs after run 0 differ
    on = asyncio_traces(perturb=True, seed=11)
    assert on[0] == FIFO_TRACE
    assert len(set(on[1:])) > 1


def test_perturb_false_marker_and_option_keep_asyncio_runs_fifo(
    pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_fifo="""
        import asyncio
        import json
        import os
        import pytest

        LOG = []

        @pytest.mark.concurrent(mode="asyncio", workers=4, runs=12, perturb=False)
        async def test_marked(concurrency):
            if concurrency.worker == 0 and concurrency.run > 0:
                LOG.append("|")
            LOG.append(str(concurrency.worker))
            await asyncio.sleep(0)

        def test_record():
            with open(os.environ["TRACE_FILE"], "a") as out:
                out.write(json.dumps("".join(LOG)) + "\\n")
        """
    )
    trace_file = pytester.path / "traces.jsonl"
    monkeypatch.setenv("TRACE_FILE", str(trace_file))
    for seed in ("11", "12"):
        run(f"--concurrency-seed={seed}", "test_fifo.py").assert_outcomes(passed=2)
    pytester.makepyfile(test_trace=TRACE)
    for seed in ("11", "12"):
        run(
            f"--concurrency-seed={seed}",
            "--concurrency-mode=asyncio",
            "--concurrency-perturb=false",
            "test_trace.py",
        ).assert_outcomes(passed=1)
    marked_11, marked_12, option_11, option_12 = (
        json.loads(line) for line in trace_file.read_text().splitlines()
    )
    assert marked_11 == marked_12 == "|".join(["0123"] * 12)  # every run starts in FIFO order
    assert option_11 == option_12 == [FIFO_TRACE] * 12


def test_marked_async_test_runs_once_per_worker_with_its_identity_and_barrier(
    pytester, run
) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        CALLS = []

        @pytest.mark.concurrent(workers=3, runs=5)
        async def test_marked(concurrency):
            assert concurrency.mode == "asyncio"
            CALLS.append((concurrency.run, concurrency.worker))
            await concurrency.barrier()
            assert {w for r, w in CALLS if r == concurrency.run} == {0, 1, 2}

        def test_count():
            assert sorted(CALLS) == [(r, w) for r in range(5) for w in range(3)]

        def test_sync_test_drives_asyncio_runs(concurrency):
            for run in concurrency.runs(3, mode="asyncio"):
                assert run(lambda: asyncio.sleep(0, concurrency.worker), workers=2) == [0, 1]
        """
    )
    run("-p", "no:randomly").assert_outcomes(passed=3)


ASYNCIO_PLUGIN = """
import asyncio
import pytest

CALLS = []

@pytest.mark.concurrent(workers=3, runs=4)
async def test_marked(concurrency):
    CALLS.append(concurrency.worker)
    await asyncio.sleep(0)

async def test_harness(concurrency):
    for run in concurrency.runs(3):
        assert await run(lambda: asyncio.sleep(0, "x"), workers=2) == ["x", "x"]
        CALLS.append("h")

def test_count():
    assert CALLS.count("h") == 3 and len(CALLS) == 15
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_with_pytest_asyncio_no_double_run_and_no_unawaited_coroutine(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytest.importorskip("pytest_asyncio")
    pytester.makepyfile(ASYNCIO_PLUGIN)
    result = pytester.runpytest(
        "-p",
        "no:run-parallel",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        f"--asyncio-mode={mode}",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-W",
        "error",
    )
    result.assert_outcomes(passed=3)
    assert "never awaited" not in result.stdout.str()


def test_misuse_gets_a_message_that_names_the_fix(pytester, run) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        @pytest.mark.concurrent(mode="asyncio", workers=2, runs=2)
        def test_sync_body():
            pass

        @pytest.mark.concurrent(mode="threads", workers=2, runs=2)
        async def test_async_body_in_threads():
            pass

        async def test_forgot_await(concurrency):
            for run in concurrency.runs(2):
                run(lambda: asyncio.sleep(0), workers=2)

        async def test_sync_callable(concurrency):
            for run in concurrency.runs(2):
                await run(lambda: 42, workers=2)
        """
    )
    result = run()
    result.assert_outcomes(failed=2, errors=2)
    for template, values in (
        (messages.SYNC_BODY_IN_ASYNCIO, {"mode": "asyncio"}),
        (messages.ASYNC_BODY_IN_OTHER_MODE, {"mode": "threads"}),
    ):
        text = template.format(nodeid="*", **values)
        result.stdout.fnmatch_lines([f"*{text[:60]}*"])
    result.stdout.fnmatch_lines([f"*{messages.RUN_NOT_AWAITED}*"])
    result.stdout.fnmatch_lines(["*must return an awaitable; *<lambda> returned int*"])


def test_hung_tasks_and_a_blocked_loop_are_reported_with_their_stacks(
    pytester, run_subprocess
) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import time
        import pytest

        @pytest.mark.concurrent(workers=2, runs=3, timeout=1)
        async def test_waits_forever(concurrency):
            if concurrency.worker == 1:
                await asyncio.Event().wait()

        @pytest.mark.concurrent(workers=2, runs=3, timeout=1)
        async def test_blocks_the_loop(concurrency):
            if concurrency.worker == 0:
                time.sleep(4)

        def test_the_next_test_runs():
            pass
        """
    )
    result = run_subprocess("-p", "no:randomly")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*HANG in run 0 of 3 (2 tasks, seed *): worker 1 did not finish within 1s*",
            "*worker 1 is stuck here:*",
            '*File "*", line *, in test_waits_forever*',
            "*await asyncio.Event().wait()*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*HANG in run 0 of 3 (2 tasks, seed *): worker 0, worker 1 did not finish within 1s*",
            "*the event loop was blocked * in worker 0*",
            "*time.sleep(4)*",
        ]
    )
    result.stdout.fnmatch_lines(["*abandoned hung threads: concurrency-event-loop*"])


def test_seeded_order_moves_only_task_steps_and_brings_every_held_step_back() -> None:
    loop = asyncio.new_event_loop()
    task = loop.create_task(asyncio.sleep(0))
    try:
        plain = [asyncio.Handle(print, (i,), loop) for i in range(4)]
        steps = [asyncio.Handle(task.get_name, (), loop) for _ in range(8)]
        assert all(aio_loop.is_task_step(h) for h in steps)
        assert not any(aio_loop.is_task_step(h) for h in plain)
        order = aio_loop.SeededOrder(seed=3, hold_rate=0.5)
        ready: deque[asyncio.Handle] = deque(plain[:2] + steps + plain[2:])
        order.arrange(ready)
        assert [h for h in ready if h in plain] == plain  # other callbacks keep FIFO order
        assert order.held, "with this seed some steps are held back"
        returned = list(ready)
        for _ in range(aio_loop.MAX_HOLD_PASSES):
            ready.clear()
            order.arrange(ready)
            returned.extend(ready)
        assert sorted(map(id, returned)) == sorted(map(id, plain + steps))
        order.held = [(steps[0], order.passes + 100)]
        ready.clear()
        order.arrange(ready)  # nothing else ready: a held step runs now, the loop never idles
        assert list(ready) == [steps[0]]
    finally:
        loop.run_until_complete(task)
        loop.close()


def test_steps_held_back_resume_when_another_order_takes_over() -> None:
    """A run that ends (or is cancelled) while its order holds steps back hands them to the
    ready queue: dropped, their tasks would never resume and be blamed on the test as leaks."""
    loop = aio_loop.ScheduledEventLoop()
    order = aio_loop.SeededOrder(seed=3, hold_rate=0.5)

    async def ticks() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def main() -> int:
        tasks = [asyncio.ensure_future(ticks()) for _ in range(8)]
        while not order.held:
            await asyncio.sleep(0)
        held = len(order.held)
        loop.use_order(aio_loop.FIFO)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)  # no hang if one is lost
        return held

    try:
        loop.use_order(order)
        loop.call_later(10, loop.stop)  # a timer is never held: no hang if main() is lost
        assert loop.run_until_complete(main()) > 0
        assert order.held == []
    finally:
        loop.close()


def test_order_for_run_is_fifo_then_shuffles_then_holds() -> None:
    assert aio_loop.order_for_run(0, 123) is aio_loop.FIFO
    odd = aio_loop.order_for_run(1, 123)
    even = aio_loop.order_for_run(2, 123)
    assert isinstance(odd, aio_loop.SeededOrder) and odd.hold_rate == 0
    assert isinstance(even, aio_loop.SeededOrder) and even.hold_rate > 0
    assert aio_loop.order_for_run(2, 123) == even  # derived from the seed alone


THEIRS_AND_OURS = """
import asyncio
import pytest
import pytest_asyncio

CALLS = []

@pytest_asyncio.fixture
async def ticket():
    await asyncio.sleep(0)
    yield "ticket"

@pytest.mark.asyncio
async def test_theirs_marked(ticket):
    assert ticket == "ticket"
    CALLS.append("theirs")

async def test_theirs_unmarked(ticket):  # auto mode runs it; strict mode refuses it
    assert ticket == "ticket"

@pytest.mark.asyncio
@pytest.mark.concurrent(workers=3, runs=2)
async def test_both_markers(concurrency):
    CALLS.append("both")
    await asyncio.sleep(0)

@pytest.mark.concurrent(workers=2, runs=2)
async def test_ours_with_their_async_fixture(ticket, concurrency):
    assert ticket == "ticket"
    CALLS.append("ours")

def test_count():
    assert (CALLS.count("theirs"), CALLS.count("both"), CALLS.count("ours")) == (1, 6, 4)
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_pytest_asyncio_tests_behave_as_without_us_and_ours_run_once_per_worker(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytest.importorskip("pytest_asyncio")
    pytester.makepyfile(THEIRS_AND_OURS)
    args = (
        "-p",
        "no:run-parallel",
        "-p",
        "no:cacheprovider",
        f"--asyncio-mode={mode}",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-W",
        "error",
        "-rA",
    )
    with_us = pytester.runpytest_subprocess(*args)
    without_us = pytester.runpytest_subprocess(
        *args,
        "-p",
        "no:concurrency",
        "-k",
        "theirs",
        "-W",
        "ignore::pytest.PytestUnknownMarkWarning",
    )

    def outcome(result: pytest.RunResult, name: str) -> str:
        line = next(
            line
            for line in result.stdout.lines
            if line.endswith(f"::{name}") or f"::{name} " in line
        )
        return line.split()[0]

    for name in ("test_theirs_marked", "test_theirs_unmarked"):
        assert outcome(with_us, name) == outcome(without_us, name), name
    assert outcome(with_us, "test_theirs_unmarked") == ("PASSED" if mode == "auto" else "FAILED")
    for name in ("test_both_markers", "test_ours_with_their_async_fixture", "test_count"):
        assert outcome(with_us, name) == "PASSED", name
    assert "never awaited" not in with_us.stdout.str() + with_us.stderr.str()


def test_own_frames_are_the_plugins_and_asyncios() -> None:
    import asyncio.tasks

    from pytest_concurrency.driver import harness

    assert aio_loop.is_own_frame(aio.__file__) and aio_loop.is_own_frame(aio_loop.__file__)
    assert aio_loop.is_own_frame(harness.__file__)
    assert aio_loop.is_own_frame(asyncio.tasks.__file__)
    assert not aio_loop.is_own_frame(__file__) and not aio_loop.is_own_frame(json.__file__)
