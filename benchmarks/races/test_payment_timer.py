"""Timer race: a payment whose provider call takes 10 ms, and a second click 15 ms later.

``Wallet.pay`` checks the balance, awaits the payment provider (10 ms), then debits. As
written, the first click's debit lands at 10 ms and the second click, at 15 ms, sees it and is
refused. But a provider call can run late: when it is still in flight at 15 ms, the second click
passes the balance check too and the wallet pays out twice what it holds. On the real clock the
call is never that late on an idle machine, so the race hides; on the virtual clock some runs
make a timer late (from the seed), and the second click lands before the first debit. The twin
reserves the amount before the call (and gives it back if the call fails).
"""

from __future__ import annotations

import asyncio
import functools

import pytest

RACE = "timer race: the second click passes the balance check before the first debit lands"

PROVIDER_SECONDS = 0.010
SECOND_CLICK_SECONDS = 0.015
OPENING_BALANCE = 100
PRICE = 60


class Wallet:
    def __init__(self) -> None:
        self.balance = OPENING_BALANCE
        self.paid: list[int] = []

    async def pay(self, amount: int) -> bool:
        if self.balance < amount:  # check ...
            return False
        await asyncio.sleep(PROVIDER_SECONDS)  # ... the provider's call (10 ms) ...
        self.balance -= amount  # ... and the debit, on what was checked before the call
        self.paid.append(amount)
        return True

    def books_balance(self) -> bool:
        return self.balance >= 0 and self.balance + sum(self.paid) == OPENING_BALANCE


class ReservingWallet(Wallet):
    async def pay(self, amount: int) -> bool:
        if self.balance < amount:
            return False
        self.balance -= amount  # reserved before the call: the next check sees it
        try:
            await asyncio.sleep(PROVIDER_SECONDS)
        except BaseException:
            self.balance += amount
            raise
        self.paid.append(amount)
        return True


async def click(wallet: Wallet, after: float) -> bool:
    await asyncio.sleep(after)
    return await wallet.pay(PRICE)


# -- the harness: a fresh wallet every run, the two clicks as two workers --------------------


async def paid_at_most_once(concurrency, wallet_type: type[Wallet]) -> None:
    for run in concurrency.runs(100):
        wallet = wallet_type()
        paid = await run(
            functools.partial(click, wallet, 0.0),
            functools.partial(click, wallet, SECOND_CLICK_SECONDS),
        )
        assert paid.count(True) == 1, f"paid {paid.count(True)} times"
        assert wallet.books_balance()


@pytest.mark.xfail(reason=RACE)
async def test_buggy_harness(concurrency):
    await paid_at_most_once(concurrency, Wallet)


async def test_fixed_harness(concurrency):
    await paid_at_most_once(concurrency, ReservingWallet)


# -- the body: worker 0 clicks at once, worker 1 15 ms later; one wallet per run ---------------


async def click_and_check(ledger: dict[int, Wallet], wallet_type: type[Wallet], concurrency):
    wallet = ledger.setdefault(concurrency.run, wallet_type())
    await click(wallet, SECOND_CLICK_SECONDS * concurrency.worker)
    await concurrency.barrier()  # both clicks are done
    assert wallet.books_balance(), f"balance {wallet.balance}, paid out {wallet.paid}"


@pytest.fixture
def ledger() -> dict[int, Wallet]:
    return {}


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=2)
async def test_buggy(ledger, concurrency):
    await click_and_check(ledger, Wallet, concurrency)


@pytest.mark.concurrent(workers=2)
async def test_fixed(ledger, concurrency):
    await click_and_check(ledger, ReservingWallet, concurrency)
