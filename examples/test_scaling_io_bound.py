"""I/O-bound work, and work outside the GIL: threads scale.

Downloading from an HTTP server (a local one on 127.0.0.1 that answers after 5 ms, like a
service a few milliseconds away): while a thread waits for the answer the others run, so
threads gain past the core count, using little CPU. Reading files and querying a database are
different: a file already in the page cache is copied by the kernel, and ``sqlite3`` runs a
query without holding the GIL, so that is work on a CPU outside the GIL: threads scale with the
cores, and on a busy machine only as far as it supplies them.

The assertions hold on a busy 2-core machine: downloads overlap their waits, and neither
reading files nor querying is ``gil-bound``. Each summary is printed (``pytest -s``).
"""

from __future__ import annotations

import http.server
import sqlite3
import threading
import time
import urllib.request

import pytest

BUDGET = 2.5
SERVER_DELAY = 0.005
SERVER_LIFETIME = 120.0
"""The server shuts itself down after this long, even if the test never tells it to."""


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET after SERVER_DELAY seconds with a small JSON body."""

    def do_GET(self) -> None:
        time.sleep(SERVER_DELAY)
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def local_server():
    """An HTTP server on 127.0.0.1 (loopback only), for this module's tests; stops by itself."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    watchdog = threading.Timer(SERVER_LIFETIME, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    download(url)  # the first request pays for warming up; the measurement should not
    yield url
    watchdog.cancel()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def download(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return len(response.read())


def test_downloads_scale_in_threads(scaling, local_server):
    report = scaling(download, local_server, workers=4, modes="threads", budget=BUDGET)
    print(report.summary())
    assert report.verdict != "gil-bound", report.summary()
    assert report.speedup("threads", 4) > 1.5, report.summary()  # waits overlap


def read_file(path: str) -> int:
    total = 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 16):
            total += len(chunk)
    return total


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("files") / "data.bin"
    path.write_bytes(bytes(range(256)) * 4096 * 4)  # 4 MiB
    return str(path)


def test_reading_files_is_not_gil_bound(scaling, data_file):
    report = scaling(read_file, data_file, workers=2, budget=BUDGET)
    print(report.summary())
    assert report.verdict != "gil-bound", report.summary()


CONNECTIONS: dict[tuple[str, int], sqlite3.Connection] = {}


def query(path: str) -> int:
    """A report query on this thread's own connection (opened on first use)."""
    key = (path, threading.get_ident())
    if key not in CONNECTIONS:
        CONNECTIONS[key] = sqlite3.connect(path, check_same_thread=False)
    sql = "SELECT count(*), sum(quantity) FROM order_lines WHERE item LIKE '%7%'"
    return int(CONNECTIONS[key].execute(sql).fetchone()[0])


@pytest.fixture(scope="module")
def orders_db(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("db") / "orders.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE order_lines (order_id INTEGER, item TEXT, quantity INTEGER)")
        db.executemany(
            "INSERT INTO order_lines VALUES (?, ?, ?)",
            ((i // 3, f"item-{i % 997}", i % 7 + 1) for i in range(60_000)),
        )
    return str(path)


def test_database_queries_are_not_gil_bound(scaling, orders_db):
    report = scaling(query, orders_db, workers=2, budget=BUDGET)
    print(report.summary())
    assert report.verdict != "gil-bound", report.summary()
