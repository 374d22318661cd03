"""Acceptance: a readable asyncio failure (issue 19): the steps of the failing run, the timers
that fired, and "fails without reordering" when asyncio's own order fails too."""

from __future__ import annotations

from pytest_concurrency import messages

WALLET = """
import asyncio
import functools
import pytest


class Wallet:
    def __init__(self):
        self.balance = 100

    async def pay(self, amount):
        if self.balance < amount:
            return False
        await asyncio.sleep(0.010)  # the provider's call
        self.balance -= amount
        return True


async def click(wallet, after):
    await asyncio.sleep(after)
    return await wallet.pay(60)


@pytest.mark.concurrent(workers=2, runs=100)
async def test_timer_race(concurrency):
    wallet = Wallet()
    await asyncio.gather(click(wallet, 0), click(wallet, 0.015))
    assert wallet.balance >= 0


async def test_harness(concurrency):
    for run in concurrency.runs(100):
        wallet = Wallet()
        await run(functools.partial(click, wallet, 0), functools.partial(click, wallet, 0.015))
        assert wallet.balance >= 0


@pytest.mark.concurrent(workers=2, runs=5)
async def test_always_wrong():
    wallet = Wallet()
    await asyncio.gather(wallet.pay(60), wallet.pay(60))
    assert wallet.balance >= 0
"""

SEED = "--concurrency-seed=3"
HEADER = messages.ASYNCIO_STEPS_HEADER.split("{run}")[0]
STEP = messages.ASYNCIO_STEP_LINE.format(
    who="worker *", start="test_wallet.py:* await asyncio.sleep(0.010)*", end="*"
)
TIMER = messages.ASYNCIO_TIMER_LINE.split("{where}")[0] + "test_wallet.py:* await asyncio.sleep(*"


def test_a_failed_run_shows_its_steps_and_timers(pytester, run) -> None:
    pytester.makepyfile(test_wallet=WALLET)
    result = run("-k", "timer_race or harness", SEED)  # one seed, one schedule: found every time
    result.assert_outcomes(failed=2)
    for _ in range(2):  # the marker's report, then the harness check's
        result.stdout.fnmatch_lines(["*" + HEADER + "*", "*" + STEP, "*" + TIMER])
    out = result.stdout.str()
    assert messages.ASYNCIO_STEP_START in out and messages.ASYNCIO_STEP_END in out
    # found by a later run: the marker's test is rerun plainly on the real clock (which way
    # that rerun of sleeps 5 ms apart goes on a loaded machine is test_asyncio_plain_rerun's)
    verdicts = (messages.FAILS_WITHOUT_REORDERING, messages.PASSES_WITHOUT_REORDERING)
    assert any(verdict.split(",")[0] in out for verdict in verdicts)


def test_a_failure_in_asyncios_own_order_says_it_fails_without_reordering(pytester, run) -> None:
    pytester.makepyfile(test_wallet=WALLET)
    result = run("-k", "always_wrong", SEED)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAILED in run 0 of 5 *",
            "*" + messages.FAILS_WITHOUT_REORDERING.format(failure="AssertionError at *"),
        ]
    )
    # with perturbation off every run is asyncio's own order: the timer race is not found
    off = run("-k", "timer_race", "--concurrency-perturb=false", SEED)
    off.assert_outcomes(passed=1)
