"""Check-then-withdraw: two withdrawals both see enough money.

``withdraw`` checks the balance and subtracts afterwards, so two workers can both pay out the
last 100 (and the subtraction itself can lose an update). The twin checks and subtracts under
one lock.
"""

from __future__ import annotations

import threading
from functools import partial

import pytest

RACE = "check-then-withdraw: paid out twice"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""

OPENING_BALANCE = 100


class Account:
    def __init__(self, balance: int) -> None:
        self.balance = balance
        self.paid_out: list[int] = []

    def withdraw(self, amount: int) -> bool:
        if self.balance >= amount:
            self.balance -= amount
            self.paid_out.append(amount)
            return True
        return False

    def books_balance(self) -> bool:
        return self.balance >= 0 and self.balance + sum(self.paid_out) == OPENING_BALANCE


class LockedAccount(Account):
    def __init__(self, balance: int) -> None:
        super().__init__(balance)
        self._lock = threading.Lock()

    def withdraw(self, amount: int) -> bool:
        with self._lock:
            return super().withdraw(amount)


# -- the harness: a fresh account every run -------------------------------------------------


def paid_at_most_once(concurrency, account_type: type[Account]) -> None:
    for run in concurrency.runs(200):
        account = account_type(OPENING_BALANCE)
        got = run(partial(account.withdraw, OPENING_BALANCE), workers=4)
        assert got.count(True) == 1, f"paid out {got.count(True)} times"
        assert account.books_balance()


@pytest.mark.xfail(reason=RACE)
def test_buggy_harness(concurrency):
    paid_at_most_once(concurrency, Account)


def test_fixed_harness(concurrency):
    paid_at_most_once(concurrency, LockedAccount)


# -- the body: one account per run, kept in a shared ledger -----------------------------------


def withdraw_and_check(ledger: dict[int, Account], account_type: type[Account], concurrency):
    account = ledger.setdefault(concurrency.run, account_type(OPENING_BALANCE))
    account.withdraw(OPENING_BALANCE)
    concurrency.barrier()  # every worker of this run has tried
    assert account.books_balance(), f"balance {account.balance}, paid out {account.paid_out}"


@pytest.fixture
def ledger() -> dict[int, Account]:
    return {}


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=200)
def test_buggy(ledger, concurrency):
    withdraw_and_check(ledger, Account, concurrency)


@pytest.mark.concurrent(workers=4, runs=200)
def test_fixed(ledger, concurrency):
    withdraw_and_check(ledger, LockedAccount, concurrency)
