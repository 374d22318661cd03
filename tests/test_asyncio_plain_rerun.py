"""Acceptance: "fails without reordering" judged from a rerun in FIFO order on the real clock
(issue 19), what is judged instead when the rerun is not made, and the JSON keys of it."""

from __future__ import annotations

import json

from pytest_concurrency import messages
from pytest_concurrency.runners.aio_rerun import RERUN_SECONDS

TESTS = """
import asyncio
import time
import pytest


class Wallet:
    def __init__(self, provider_seconds=0.010):
        self.balance = 100
        self.provider_seconds = provider_seconds

    async def pay(self, amount):
        if self.balance < amount:
            return False
        await asyncio.sleep(self.provider_seconds)  # the provider's call
        self.balance -= amount
        return True


@pytest.mark.concurrent(workers=2, runs=5)
async def test_always_wrong():
    '''Both payments pass the check before either debit, in any order: plain asyncio too.'''
    wallet = Wallet()
    await asyncio.gather(wallet.pay(60), wallet.pay(60))
    assert wallet.balance >= 0


@pytest.mark.concurrent(workers=2, runs=5, clock="real")
async def test_always_wrong_on_the_real_clock():
    wallet = Wallet()
    await asyncio.gather(wallet.pay(60), wallet.pay(60))
    assert wallet.balance >= 0


class Ledger:
    def __init__(self):
        self.events = []

    def debit(self):
        self.events.append("debit")

    def check(self, done):
        self.events.append("check")
        done.set_result(None)


@pytest.mark.concurrent(workers=1, runs=50)
async def test_timer_order():
    '''The debit is due 10 ms from now, the second check 15 ms from now: asyncio fires them in
    that order however late the loop gets to them (both deadlines are fixed here, from one
    reading of the clock); only a late timer swaps them.'''
    loop = asyncio.get_running_loop()
    ledger, done, now = Ledger(), loop.create_future(), loop.time()
    loop.call_at(now + 0.010, ledger.debit)
    loop.call_at(now + 0.015, ledger.check, done)
    await done
    assert ledger.events == ["debit", "check"]


@pytest.mark.concurrent(workers=1, runs=3)
async def test_needs_real_time():
    '''Wall time passes while asyncio sleeps, on the real clock only.'''
    started = time.monotonic()
    await asyncio.sleep(0.05)
    assert time.monotonic() - started >= 0.049


async def click(wallet, after):
    await asyncio.sleep(after)
    return await wallet.pay(60)


@pytest.mark.concurrent(workers=1, runs=50)
async def test_slow_timer_race():
    '''The timer race at 100 times the scale: 2.5 s and more on the loop's clock.'''
    wallet = Wallet(provider_seconds=1.0)
    await asyncio.gather(click(wallet, 0), click(wallet, 1.5))
    assert wallet.balance >= 0


async def test_harness(concurrency):
    for run in concurrency.runs(50):
        ledger = Ledger()

        async def order():
            loop = asyncio.get_running_loop()
            done, now = loop.create_future(), loop.time()
            loop.call_at(now + 0.010, ledger.debit)
            loop.call_at(now + 0.015, ledger.check, done)
            await done

        await run(order, workers=1)
        assert ledger.events == ["debit", "check"]
"""

SEED = "--concurrency-seed=3"


def entries(pytester) -> dict[str, dict]:
    document = json.loads((pytester.path / "report.json").read_text())
    return {entry["nodeid"].split("::")[-1]: entry for entry in document["tests"]}


def head(template: str) -> str:
    """The fixed text of a message up to its first field, for fnmatch."""
    return "*" + template.split("{")[0].strip() + "*"


def test_a_bug_that_fails_in_plain_order_says_so_from_its_rerun(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_plain=TESTS)
    result = run_subprocess("-k", "always_wrong", SEED, "--concurrency-json=report.json")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*FAILED in run 0 of 5 *",
            "*"
            + messages.FAILS_WITHOUT_REORDERING.format(failure="AssertionError at test_plain.py:*"),
        ]
    )
    # on the real clock, run 0 is itself plain asyncio: no rerun, the run is the answer
    result.stdout.fnmatch_lines(["*" + messages.FAILS_IN_PLAIN_RUN])
    tests = entries(pytester)
    virtual, real = tests["test_always_wrong"], tests["test_always_wrong_on_the_real_clock"]
    assert (virtual["clock"], virtual["fails_without_reordering"]) == ("virtual", True)
    assert (virtual["without_reordering_from"], virtual["rerun_skipped"]) == ("rerun", None)
    assert (real["clock"], real["fails_without_reordering"]) == ("real", True)
    assert (real["without_reordering_from"], real["rerun_skipped"]) == ("failing run", None)
    assert virtual["injections"] == real["injections"] == []


def test_a_timer_race_that_needs_late_timers_passes_its_rerun(pytester, run_subprocess) -> None:
    """Found with a late timer (a later run); rerun in FIFO order on the real clock it passes,
    and the report says what the failure needs. A failure of the virtual clock itself (a test
    that reads the wall clock) passes its rerun too, and the report names the clock."""
    pytester.makepyfile(test_plain=TESTS)
    result = run_subprocess(
        "-k", "timer_order or needs_real_time", SEED, "--concurrency-json=report.json"
    )
    result.assert_outcomes(failed=2)
    needs = messages.PASSES_WITHOUT_REORDERING.format(changes="*")
    result.stdout.fnmatch_lines(["*RACE DETECTED in run *", "*" + needs])
    only_the_clock = messages.PASSES_WITHOUT_REORDERING.format(
        changes=messages.CHANGE_VIRTUAL_CLOCK
    )
    result.stdout.fnmatch_lines(["*FAILED in run 0 of 3 *", "*" + only_the_clock])
    assert messages.FAILS_WITHOUT_REORDERING.split("(")[0] not in result.stdout.str()
    tests = entries(pytester)
    for name in ("test_timer_order", "test_needs_real_time"):
        entry = tests[name]
        assert entry["fails_without_reordering"] is False
        assert (entry["without_reordering_from"], entry["rerun_skipped"]) == ("rerun", None)
    assert tests["test_timer_order"]["failing_run"] > 0


def test_a_long_failing_run_is_not_rerun_and_the_report_says_what_was_judged(
    pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_plain=TESTS)
    result = run_subprocess("-k", "slow_timer_race", SEED, "--concurrency-json=report.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*RACE DETECTED in run *", head(messages.PASSED_IN_RUN_ZERO) + f"{RERUN_SECONDS:g} s*"]
    )
    entry = entries(pytester)["test_slow_timer_race"]
    assert entry["fails_without_reordering"] is False
    assert entry["without_reordering_from"] == "run 0"
    assert entry["rerun_skipped"].startswith(messages.RERUN_SKIPPED_LONG.split("{")[0])


def test_a_harness_run_is_judged_from_run_zero(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_plain=TESTS)
    result = run_subprocess("-k", "harness", SEED, "--concurrency-json=report.json")
    result.assert_outcomes(failed=1)
    judged = messages.PASSED_IN_RUN_ZERO.format(
        why=messages.RERUN_SKIPPED_HARNESS, clock="virtual", changes="*"
    )
    result.stdout.fnmatch_lines(["*the check after the run failed*", "*" + judged])
    entry = entries(pytester)["test_harness"]
    assert entry["failing_run"] > 0 and entry["clock"] == "virtual"
    assert (entry["fails_without_reordering"], entry["without_reordering_from"]) == (False, "run 0")
    assert entry["rerun_skipped"] == messages.RERUN_SKIPPED_HARNESS
