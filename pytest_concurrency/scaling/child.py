"""The worker side of a scaling measurement: run the unit of work, send back plain numbers.

Used in two places: by worker threads in the measuring process, and as the main loop of each
process of the scaling process pool. It stands alone (the house style's rule 10, after
pytest-xdist's ``remote.py``): it imports only the standard library, so that a worker process
starts quickly, and what it sends back over its pipe is tuples of floats and strings.

The protocol on the pipe, parent to child, is one tuple per message:

* ``("load", payload)``: unpickle ``(fn, args, kwargs)`` and call it once to warm up;
  the reply is ``("ok", None)``, or ``("unloadable", traceback_text)`` if unpickling failed.
* ``("run", start_at, calls)``: wait until ``time.perf_counter() >= start_at``, call the unit
  ``calls`` times; the reply is ``("sample", (start, end, cpu, run_delay))``.
* ``("stop",)``: return.

Any failure is replied as ``("error", traceback_text)``; the child keeps serving.
"""

from __future__ import annotations

import hashlib
import pickle
import time
import traceback
from collections.abc import Callable
from typing import Any

SCHEDSTAT_PATH = "/proc/thread-self/schedstat"
"""Linux per-thread scheduler statistics: time on a CPU, time runnable but waiting (ns), ..."""
SPIN_BEFORE_START = 0.01
"""How long before a round's start time a worker stops sleeping and spins on the clock."""

REFERENCE_BUFFER = bytes(1 << 18)
"""256 KiB: hashing it is CPU work in C that releases the GIL and shares nothing."""

Sample = tuple[float, float, float, float | None]
"""(start, end, cpu seconds, run-queue delay seconds or None): one worker's batch of calls."""


def run_delay_seconds() -> float | None:
    """Time this thread has spent runnable but not running, or None where it cannot be seen."""
    try:
        with open(SCHEDSTAT_PATH) as stat:
            fields = stat.read().split()
        return int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def reference_work() -> bytes:
    """The machine's reference unit: perfectly parallel CPU work, in threads or processes."""
    return hashlib.sha256(REFERENCE_BUFFER).digest()


def wait_until(start_at: float) -> None:
    """Sleep until just before ``start_at`` on the ``perf_counter`` clock, then spin to it."""
    remaining = start_at - time.perf_counter()
    if remaining > SPIN_BEFORE_START:
        time.sleep(remaining - SPIN_BEFORE_START)
    while time.perf_counter() < start_at:
        pass


def run_batch(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    calls: int,
    cpu_clock: Callable[[], float],
) -> Sample:
    """Call the unit ``calls`` times; return its wall span, CPU time and run-queue delay."""
    delay_before = run_delay_seconds()
    cpu_before = cpu_clock()
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args, **kwargs)
    end = time.perf_counter()
    cpu = cpu_clock() - cpu_before
    delay_after = run_delay_seconds()
    if delay_before is None or delay_after is None:
        return (start, end, cpu, None)
    return (start, end, cpu, delay_after - delay_before)


def child_main(conn: Any) -> None:
    """Serve ``load`` / ``run`` / ``stop`` messages on ``conn`` until told to stop or orphaned."""
    unit: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        try:
            if message[0] == "load":
                try:
                    unit = pickle.loads(message[1])
                except BaseException:
                    conn.send(("unloadable", traceback.format_exc()))
                    continue
                fn, args, kwargs = unit
                fn(*args, **kwargs)
                conn.send(("ok", None))
            elif message[0] == "run" and unit is not None:
                _, start_at, calls = message
                wait_until(start_at)
                fn, args, kwargs = unit
                conn.send(("sample", run_batch(fn, args, kwargs, calls, time.process_time)))
            else:
                conn.send(("error", f"unexpected message {message[0]!r}"))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
