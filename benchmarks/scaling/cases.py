"""The labelled set for scaling verdicts: units of work whose answer is known.

Each case is a module-level function (so worker processes can import it) and the verdicts
that count as right for it. Linux and macOS only: the shared lock uses ``fcntl.flock``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

BUFFER = os.urandom(1 << 20)
"""1 MiB: hashlib releases the GIL for buffers over 2 KiB."""
LOCK_PATH = os.path.join(tempfile.gettempdir(), "pytest-concurrency-scaling-bench.lock")
THREAD_LOCK = threading.Lock()
_lock_file: IO[bytes] | None = None


def pure_python_loop() -> int:
    """CPU work in the interpreter: holds the GIL throughout."""
    total = 0
    for i in range(20_000):
        total += i * i
    return total


def sleeping() -> None:
    """Waits without using a CPU, like a call to a slow service."""
    time.sleep(0.002)


def hash_large_buffer() -> bytes:
    """CPU work in C that releases the GIL."""
    return hashlib.sha256(BUFFER).digest()


def _process_lock() -> IO[bytes]:
    global _lock_file
    if _lock_file is None:
        _lock_file = open(LOCK_PATH, "ab")  # noqa: SIM115 - held for the process's life
    return _lock_file


def hash_inside_shared_lock() -> bytes:
    """The same hashing, inside one lock shared by all threads and all processes."""
    lock_file = _process_lock()
    with THREAD_LOCK:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            return hashlib.sha256(BUFFER).digest()
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable[[], object]
    expected: tuple[str, ...]


CASES = (
    Case("pure-python loop", pure_python_loop, ("gil-bound",)),
    Case("sleeping", sleeping, ("io-bound",)),
    Case("hashing 1 MiB buffers", hash_large_buffer, ("scales",)),
    Case("hashing inside one shared lock", hash_inside_shared_lock, ("contended", "serial")),
)
