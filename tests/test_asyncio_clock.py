"""Acceptance: asyncio mode on the virtual clock (issue 19), and the seeded jitter of timers."""

from __future__ import annotations

import json
import random

import pytest

from pytest_concurrency.engine.settings import CLOCKS, FIELDS, Settings

# the runner modules as a whole, as test_asyncio.py does: the in-process runs (pytester) then
# find the same modules the package's attributes name
from pytest_concurrency.runners import aio
from pytest_concurrency.runners.aio_clock import (
    EXACT,
    MAX_LATENESS,
    TimerJitter,
    timers_for_run,
)

TIMELINE = """
import asyncio
import time
import pytest

SCALE = {scale}


async def timeline():
    '''60 s of sleeps, a timeout that expires and one that does not: what happened, in order.'''
    loop = asyncio.get_running_loop()
    started, real_started = loop.time(), time.monotonic()
    events = []

    async def later(name, seconds):
        await asyncio.sleep(seconds * SCALE)
        events.append(name)

    await asyncio.gather(later("b", 20), later("a", 10), later("c", 30))
    try:
        await asyncio.wait_for(asyncio.sleep(50 * SCALE), timeout=20 * SCALE)
    except asyncio.TimeoutError:  # TimeoutError on 3.11+, not yet on 3.10
        events.append("timed out")
    # a timeout far beyond the sleep: on the real clock even a stalled loop keeps this order
    events.append(await asyncio.wait_for(asyncio.sleep(10 * SCALE, "in time"), 1000 * SCALE))
    return events, loop.time() - started, time.monotonic() - real_started


@pytest.mark.concurrent(workers=2, runs=1, clock="{clock}", timeout=600)
async def test_marked():
    events, elapsed, real = await timeline()
    assert events == ["a", "b", "c", "timed out", "in time"]
    assert elapsed >= 60 * SCALE
    print(f"{clock}: {{elapsed:.3f}} s on the loop's clock, real time shorter: {{real < 60}}")


async def test_harness(concurrency):
    for run in concurrency.runs(1):
        for events, elapsed, real in await run(timeline, workers=2):
            assert events == ["a", "b", "c", "timed out", "in time"]
            assert elapsed >= 60 * SCALE
            print(f"harness {clock}: {{elapsed:.3f}} s, real time shorter: {{real < 60}}")
"""


def test_sixty_seconds_of_virtual_sleep_take_no_wall_time_and_end_as_on_the_real_clock(
    pytester, run_subprocess
) -> None:
    """The same timeline on both clocks: same events in the same order; on the virtual clock
    its 60 s on the loop's clock pass in less real time than the sleeps ask for (asyncio never
    wakes a sleeper early, so on the real clock this could not hold), the harness form too."""
    pytester.makepyfile(test_virtual=TIMELINE.format(scale=1, clock="virtual"))
    result = run_subprocess("-s", "test_virtual.py", "--concurrency-timeout=600")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*virtual: 60.000 s on the loop's clock, real time shorter: True*",
            "*harness virtual: 60.000 s, real time shorter: True*",
        ]
    )
    # the real clock, scaled down to 0.6 s: the same events (the marker says real; the
    # harness takes the option)
    pytester.makepyfile(test_real=TIMELINE.format(scale=0.01, clock="real"))
    result = run_subprocess(
        "-s", "test_real.py", "--concurrency-clock=real", "--concurrency-timeout=600"
    )
    result.assert_outcomes(passed=2)


CLOCK_PROBE = """
import asyncio
import time
import pytest


def loop_clock():
    '''virtual: the loop's clock stands still while a callback blocks; real: it moves.'''
    loop = asyncio.get_running_loop()
    before = loop.time()
    time.sleep(0.01)
    return "virtual" if loop.time() == before else "real"


@pytest.mark.concurrent(workers=1, runs=1)
async def test_default():
    print("default:", loop_clock())


@pytest.mark.concurrent(workers=1, runs=1, clock="real")
async def test_marker_real():
    print("marker real:", loop_clock())


@pytest.mark.concurrent(workers=1, runs=1, clock="virtual")
async def test_marker_virtual():
    print("marker virtual:", loop_clock())


async def test_harness(concurrency):
    print("harness:", loop_clock())
"""


@pytest.mark.parametrize(
    ("how", "default"),
    [
        ((), "virtual"),
        (("--concurrency-clock=real",), "real"),
        (("env",), "real"),
        (("ini",), "real"),
        (("ini", "--concurrency-clock=virtual"), "virtual"),
    ],
)
def test_clock_is_chosen_by_marker_option_environment_and_ini(
    pytester, run, monkeypatch: pytest.MonkeyPatch, how: tuple[str, ...], default: str
) -> None:
    pytester.makepyfile(test_probe=CLOCK_PROBE)
    args = [arg for arg in how if arg.startswith("--")]
    if "env" in how:
        monkeypatch.setenv(FIELDS["clock"].env, "real")
    if "ini" in how:
        pytester.makeini(f"[pytest]\n{FIELDS['clock'].ini} = real\n")
    result = run("-s", *args)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random(
        [
            f"*default: {default}*",
            "*marker real: real*",
            "*marker virtual: virtual*",
            f"*harness: {default}*",
        ]
    )


def test_a_bad_clock_names_where_it_came_from(pytester, run) -> None:
    pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.concurrent(clock="fake")
        async def test_marked():
            pass
        """
    )
    result = run("--concurrency-clock=wall")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--concurrency-clock=wall*{', '.join(CLOCKS)}*"])
    result = run()
    result.stdout.fnmatch_lines([f"*clock='fake'*{', '.join(CLOCKS)}*"])
    result.assert_outcomes(errors=1)


REAL_WAITS = """
import asyncio
import time
import pytest


async def echo(reader, writer):
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()


@pytest.mark.concurrent(workers=3, runs=5)
async def test_a_socket_answers_before_its_timeout():
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\\n")
        line = await asyncio.wait_for(reader.readline(), timeout=30)
        assert line == b"ping\\n"
        writer.close()
    finally:
        server.close()


@pytest.mark.concurrent(workers=3, runs=5)
async def test_a_thread_finishes_before_its_timeout():
    assert await asyncio.wait_for(asyncio.to_thread(time.sleep, 0.05), timeout=30) is None
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.run_in_executor(None, sum, [1, 2]), timeout=30) == 3
"""


def test_real_io_and_executor_jobs_are_waited_for_in_real_time(pytester, run_subprocess) -> None:
    """While a socket is registered or an executor job runs, the virtual clock does not jump
    past the timeout that guards it: the wait is real."""
    pytester.makepyfile(test_real_waits=REAL_WAITS)
    run_subprocess().assert_outcomes(passed=2)


CALLED_BACK_BY_A_THREAD = """
import asyncio
import threading
import time
import pytest


@pytest.mark.concurrent(workers=2, runs=3)
async def test_a_thread_of_its_own_calls_back():
    # as anyio's worker threads do: the answer comes through call_soon_threadsafe, and no
    # timer nor executor job tells the loop that something is on its way
    loop = asyncio.get_running_loop()
    answer = loop.create_future()

    def work():
        time.sleep(0.2)
        loop.call_soon_threadsafe(answer.set_result, 42)

    threading.Thread(target=work, daemon=True).start()
    assert await asyncio.wait_for(answer, timeout=30) == 42
"""


def test_a_thread_the_test_started_is_waited_for_in_real_time(pytester, run_subprocess) -> None:
    """A thread started during the run may call back at any moment: while it lives the clock
    waits in real time instead of jumping to the next timer (the run's deadline here)."""
    pytester.makepyfile(test_called_back=CALLED_BACK_BY_A_THREAD)
    run_subprocess().assert_outcomes(passed=1)


BUSY = """
import asyncio
import pytest


@pytest.mark.concurrent(workers=2, runs=1, timeout=1)
async def test_never_idle():
    while True:
        await asyncio.sleep(0)


@pytest.mark.concurrent(workers=2, runs=1, timeout=5)
async def test_waits_forever():
    await asyncio.Event().wait()
"""


def test_tasks_that_never_let_the_clock_jump_are_still_reported_as_hung(
    pytester, run_subprocess
) -> None:
    """On the virtual clock a busy loop of ``sleep(0)`` never lets the clock jump: once its run
    is past its deadline in real time, the clock keeps up with the real one and the run ends."""
    pytester.makepyfile(test_busy=BUSY)
    result = run_subprocess(timeout=120)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*HANG in run 0*did not finish within 1s*"])
    result.stdout.fnmatch_lines(["*HANG in run 0*did not finish within 5s*"])


# -- the seeded jitter of timers ----------------------------------------------------------------

JITTER_TRACE = """
import asyncio
import json
import os
import pytest

TRACE = []


async def sleeper(name, seconds):
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(seconds)
    late = loop.time() - started - seconds
    assert late >= -1e-9, "a timer fired early"
    assert late <= seconds * {lateness} + 1e-9, "a timer fired more than its delay late"
    TRACE.append(name)


@pytest.mark.concurrent(workers=1, runs=40)
async def test_timers(concurrency):
    await asyncio.gather(*(sleeper(f"{{i}}", 0.010 + 0.001 * i) for i in range(5)))
    TRACE.append("|")


def test_record():
    with open(os.environ["TRACE_FILE"], "a") as out:
        out.write(json.dumps("".join(TRACE)) + "\\n")
"""


def test_timers_fire_late_from_the_seed_one_seed_one_schedule(
    pytester, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timers due close together fire in another order in some runs, never early and never
    more than their delay late; run 0 keeps their order; the same seed makes the same runs,
    another seed others."""
    pytester.makepyfile(test_jitter=JITTER_TRACE.format(lateness=MAX_LATENESS))
    trace_file = pytester.path / "traces.jsonl"
    monkeypatch.setenv("TRACE_FILE", str(trace_file))
    for seed in ("21", "21", "22"):
        run(f"--concurrency-seed={seed}").assert_outcomes(passed=2)
    first, again, other = (json.loads(line) for line in trace_file.read_text().splitlines())
    assert first == again
    assert first != other
    runs = first.split("|")[:-1]
    assert runs[0] == "01234"  # run 0: the timers as set
    assert len(set(runs)) > 1  # later runs: some fire late, after timers set for later


def test_the_virtual_clock_is_the_default_of_settings_and_runner() -> None:
    assert Settings().clock == CLOCKS[0] == aio.VIRTUAL == "virtual"


def test_the_jitter_of_a_run_is_its_seeds_and_never_early() -> None:
    assert timers_for_run(0, 5) is EXACT
    moves = []
    for seed in (5, 5, 6):
        timers = timers_for_run(1, seed)
        assert isinstance(timers, TimerJitter)
        moves.append([timers.move(10.0 + i, 10.0) for i in range(1, 50)])
    assert moves[0] == moves[1]
    assert moves[0] != moves[2]
    for delays in moves:
        for i, when in enumerate(delays, start=1):
            assert 10.0 + i <= when <= 10.0 + i * (1 + MAX_LATENESS)
    draws = random.Random(0)
    jitter = TimerJitter(1, rate=1.0, lateness=MAX_LATENESS)
    for _ in range(100):
        now = draws.uniform(0, 100)
        assert jitter.move(now, now) == now  # a timer due now stays due now
        assert jitter.move(now - 1, now) == now - 1


def test_perturb_false_keeps_every_timer_exact(pytester, run, monkeypatch) -> None:
    """The control of the test above: without perturbation every run is run 0."""
    pytester.makepyfile(test_jitter=JITTER_TRACE.format(lateness=MAX_LATENESS))
    trace_file = pytester.path / "traces.jsonl"
    monkeypatch.setenv("TRACE_FILE", str(trace_file))
    run("--concurrency-seed=21", "--concurrency-perturb=false").assert_outcomes(passed=2)
    assert set(json.loads(trace_file.read_text()).split("|")[:-1]) == {"01234"}
