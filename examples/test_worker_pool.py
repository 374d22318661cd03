"""A web service's worker pool and the thread-safety checklist in practice.

The pool (see ``worker_pool.py``) serves requests from a queue in four worker threads. Two
items of the usual checklist, each shown as found and then fixed:

* a global request counter without a lock loses counts;
* one SQLite connection shared by every request mixes their transactions: one request's
  rollback undoes another's order, one request's commit makes another's half an order
  permanent. One connection per request keeps each transaction to its own request.

The third item, a SELECT-then-INSERT that signs a user up twice, is in
``test_duplicate_signups.py``, in threads and in processes.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from worker_pool import pool, responses

# -- a global counter without a lock -------------------------------------------------------

requests_served = 0
SERVED_LOCK = threading.Lock()


def count_request(request: int) -> int:
    global requests_served
    requests_served += 1  # read, add, write back: another worker may write in between
    return 200


def count_request_locked(request: int) -> int:
    global requests_served
    with SERVED_LOCK:
        requests_served += 1
    return 200


def serve_and_count(concurrency, handle, requests: int = 400) -> None:
    global requests_served
    for run in concurrency.runs(30):
        requests_served = 0
        run(*pool(handle, range(requests)))
        run.observe(requests_served)
        assert requests_served == requests


@pytest.mark.xfail(strict=True, reason="race: requests_served += 1 without a lock loses counts")
def test_request_counter_without_a_lock(concurrency):
    serve_and_count(concurrency, count_request)


def test_request_counter_with_a_lock(concurrency):
    serve_and_count(concurrency, count_request_locked)


# -- one database connection for every request, or one per request --------------------------

SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE orders (id INTEGER PRIMARY KEY);
CREATE TABLE order_lines (
    order_id INTEGER NOT NULL REFERENCES orders (id),
    item TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0)
);
"""


class OrderService:
    """Places an order in one transaction: all its lines, or nothing if a line is invalid."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def place_order(self, order: tuple[int, list[tuple[str, int]]]) -> tuple[int, int]:
        order_id, lines = order
        db = self.connection()
        try:
            with db:  # commit if the block succeeds, roll back if it raises
                db.execute("INSERT INTO orders (id) VALUES (?)", (order_id,))
                for item, quantity in lines:
                    db.execute(
                        "INSERT INTO order_lines VALUES (?, ?, ?)", (order_id, item, quantity)
                    )
            return order_id, 201
        except sqlite3.IntegrityError:  # quantity 0: the whole order is rolled back
            return order_id, 400
        finally:
            self.release(db)

    def connection(self) -> sqlite3.Connection:
        raise NotImplementedError

    def release(self, db: sqlite3.Connection) -> None:
        raise NotImplementedError


class SharedConnectionService(OrderService):
    """One connection, opened at start-up and used by every request."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        # check_same_thread=False silences "SQLite objects created in a thread can only be
        # used in that same thread": the usual first "fix", and the bug shown here.
        self.db = sqlite3.connect(path, timeout=30, check_same_thread=False)

    def connection(self) -> sqlite3.Connection:
        return self.db

    def release(self, db: sqlite3.Connection) -> None:
        pass


class ConnectionPerRequestService(OrderService):
    """A connection of its own for every request: its transaction is its own."""

    def connection(self) -> sqlite3.Connection:
        return self.connect()

    def release(self, db: sqlite3.Connection) -> None:
        db.close()


def orders_for(run_index: int, count: int = 24) -> list[tuple[int, list[tuple[str, int]]]]:
    """Orders of two or three lines; every third one has a line with quantity 0 (rejected)."""
    orders = []
    for number in range(count):
        lines = [("apple", 3), ("pear", 1)]
        if number % 3 == 2:
            lines.append(("plum", 0))
        orders.append((run_index * 1000 + number, lines))
    return orders


def stored_orders(path: Path) -> dict[int, int]:
    """Order id -> number of lines, as the database has them."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT orders.id, count(order_lines.item) FROM orders"
            " LEFT JOIN order_lines ON order_lines.order_id = orders.id GROUP BY orders.id"
        )
        return dict(rows.fetchall())


def fresh_database(path: Path) -> Path:
    for leftover in path.parent.glob(path.name + "*"):  # the last run's database, WAL, SHM
        leftover.unlink()
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
    return path


def every_accepted_order_stored_whole(concurrency, service_type, tmp_path: Path) -> None:
    for run in concurrency.runs(30):
        path = fresh_database(tmp_path / "orders.db")
        service = service_type(path)
        orders = orders_for(run.index)
        results = run(*pool(service.place_order, orders))
        accepted = {order_id for order_id, status in responses(results) if status == 201}
        expected = {order_id: len(lines) for order_id, lines in orders if order_id in accepted}
        if isinstance(service, SharedConnectionService):
            service.db.close()
        assert stored_orders(path) == expected


@pytest.mark.xfail(
    strict=True,
    reason="race: one connection shared by every request mixes their transactions",
)
def test_one_connection_shared_by_every_request(concurrency, tmp_path):
    every_accepted_order_stored_whole(concurrency, SharedConnectionService, tmp_path)


def test_one_connection_per_request(concurrency, tmp_path):
    every_accepted_order_stored_whole(concurrency, ConnectionPerRequestService, tmp_path)
