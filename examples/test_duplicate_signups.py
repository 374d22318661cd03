"""SELECT-then-INSERT: a double-clicked "Sign up" creates the same user twice.

``sign_up`` asks the database whether the email is taken, then inserts it. Two requests for the
same email (a double click, a retry after a timeout, two browser tabs) can both ask before
either inserts, and both insert. A ``UNIQUE`` column makes the database the judge, and
``INSERT OR IGNORE`` turns the loser's insert into a no-op instead of an error.

The race is the same whether the requests are served by threads of one process (each request
with its own connection, as in ``test_worker_pool.py``) or by several processes (gunicorn
workers, Celery workers) that share only the database file: both are shown.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

import pytest
from worker_pool import pool, responses

RACY_SCHEMA = "PRAGMA journal_mode = WAL; CREATE TABLE users (email TEXT NOT NULL);"
FIXED_SCHEMA = "PRAGMA journal_mode = WAL; CREATE TABLE users (email TEXT NOT NULL UNIQUE);"


def sign_up(path: str, email: str) -> int:
    """Create the user unless the email is taken: 201 created, 409 taken."""
    with sqlite3.connect(path, timeout=30) as db:
        taken = db.execute("SELECT 1 FROM users WHERE email = ?", (email,)).fetchone()
        if taken:
            return 409
        db.execute("INSERT INTO users (email) VALUES (?)", (email,))
        return 201


def sign_up_fixed(path: str, email: str) -> int:
    """The database decides: the UNIQUE column lets exactly one insert through."""
    with sqlite3.connect(path, timeout=30) as db:
        inserted = db.execute("INSERT OR IGNORE INTO users (email) VALUES (?)", (email,))
        return 201 if inserted.rowcount == 1 else 409


def users_named(path: str, email: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM users WHERE email = ?", (email,)).fetchone()[0]


def database(tmp_path: Path, schema: str) -> str:
    path = tmp_path / "users.db"
    with sqlite3.connect(path) as db:
        db.executescript(schema)
    return str(path)  # a path, not a connection: it pickles, for worker processes


@pytest.fixture
def racy_db(tmp_path):
    return database(tmp_path, RACY_SCHEMA)


@pytest.fixture
def fixed_db(tmp_path):
    return database(tmp_path, FIXED_SCHEMA)


# -- threads: the worker pool serves four sign-ups for the same email ------------------------


def signed_up_once_in_threads(concurrency, handle, path: str) -> None:
    for run in concurrency.runs(40):
        email = f"ada-{run.index}@example.com"
        results = run(*pool(functools.partial(handle, path), [email] * 4))
        assert sorted(responses(results)) == [201, 409, 409, 409]
        assert users_named(path, email) == 1


@pytest.mark.xfail(strict=True, reason="race: SELECT then INSERT signs the same email up twice")
def test_sign_up_twice_in_threads(concurrency, racy_db):
    signed_up_once_in_threads(concurrency, sign_up, racy_db)


def test_sign_up_or_ignore_in_threads(concurrency, fixed_db):
    signed_up_once_in_threads(concurrency, sign_up_fixed, fixed_db)


# -- processes: four worker processes share only the database file ---------------------------


def signed_up_once_in_processes(concurrency, handle, path: str) -> None:
    for run in concurrency.runs(40, mode="processes"):
        email = f"ada-{run.index}@example.com"
        statuses = run(functools.partial(handle, path, email), workers=4)
        assert sorted(statuses) == [201, 409, 409, 409]
        assert users_named(path, email) == 1


@pytest.mark.xfail(strict=True, reason="race: SELECT then INSERT signs the same email up twice")
def test_sign_up_twice_in_processes(concurrency, racy_db):
    signed_up_once_in_processes(concurrency, sign_up, racy_db)


def test_sign_up_or_ignore_in_processes(concurrency, fixed_db):
    signed_up_once_in_processes(concurrency, sign_up_fixed, fixed_db)
