"""SQLite check-then-insert: a SELECT, then an INSERT, in two autocommit statements.

Each worker has its own connection to one database file. ``register`` inserts a user only if a
SELECT found none; two workers between the SELECT and the INSERT both insert. The twin does
both inside one ``BEGIN IMMEDIATE`` transaction, which SQLite serialises across connections.
"""

from __future__ import annotations

import sqlite3
import threading
from functools import partial
from pathlib import Path

import pytest

RACE = "an email registered twice"
"""Why the buggy tests fail: they are expected to (strict xfail), the twins to pass."""

SCHEMA = "CREATE TABLE users (email TEXT NOT NULL)"


class UserStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        with self.open() as connection:
            connection.execute(SCHEMA)

    def open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._opened.append(connection)
        return connection

    def connection(self) -> sqlite3.Connection:
        """This thread's connection: one per worker, as a server would have."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self.open()
        return connection

    def exists(self, connection: sqlite3.Connection, email: str) -> bool:
        row = connection.execute("SELECT count(*) FROM users WHERE email = ?", (email,)).fetchone()
        return bool(row[0])

    def register(self, email: str) -> bool:
        connection = self.connection()
        if self.exists(connection, email):
            return False
        connection.execute("INSERT INTO users (email) VALUES (?)", (email,))
        return True

    def count(self, email: str) -> int:
        query = "SELECT count(*) FROM users WHERE email = ?"
        return int(self.connection().execute(query, (email,)).fetchone()[0])

    def close(self) -> None:
        for connection in self._opened:
            connection.close()


class TransactionalUserStore(UserStore):
    def register(self, email: str) -> bool:
        connection = self.connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            created = not self.exists(connection, email)
            if created:
                connection.execute("INSERT INTO users (email) VALUES (?)", (email,))
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return created


def open_store(store_type: type[UserStore], directory: Path):
    store = store_type(directory / "users.db")
    yield store
    store.close()


@pytest.fixture
def store(tmp_path):
    yield from open_store(UserStore, tmp_path)


@pytest.fixture
def transactional_store(tmp_path):
    yield from open_store(TransactionalUserStore, tmp_path)


# -- the harness: a new email every run -------------------------------------------------------


def registered_once(concurrency, store: UserStore) -> None:
    for run in concurrency.runs(100):
        email = f"user-{run.index}@example.com"
        run(partial(store.register, email), workers=4)
        assert store.count(email) == 1, f"{email} registered {store.count(email)} times"


@pytest.mark.xfail(reason=RACE)
def test_buggy_harness(store, concurrency):
    registered_once(concurrency, store)


def test_fixed_harness(transactional_store, concurrency):
    registered_once(concurrency, transactional_store)


# -- the body: every worker registers this run's email ----------------------------------------


def register_and_check(store: UserStore, concurrency) -> None:
    email = f"user-{concurrency.run}@example.com"
    store.register(email)
    concurrency.barrier()  # every worker of this run has registered
    assert store.count(email) == 1, f"{email} registered {store.count(email)} times"


@pytest.mark.xfail(reason=RACE)
@pytest.mark.concurrent(workers=4, runs=100)
def test_buggy(store, concurrency):
    register_and_check(store, concurrency)


@pytest.mark.concurrent(workers=4, runs=100)
def test_fixed(transactional_store, concurrency):
    register_and_check(transactional_store, concurrency)
