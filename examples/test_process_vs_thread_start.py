"""What a process start costs, measured against a thread start.

"Processes are much more expensive to create than threads" is the usual advice; here is how
much, on this machine, for each start method: ``fork`` copies the parent (the default on
Linux up to Python 3.13), ``forkserver`` forks a small clean server process (the default from
3.14, and what the plugin's process mode uses), ``spawn`` starts a fresh interpreter (the
default on macOS and Windows). Each figure is the time to start a worker and wait for it to
finish an empty function: the fastest of several (on a busy machine, noise only ever adds to
a start), with the median beside it. The plugin's process mode starts its pool once per test, not once
per run, so this cost is paid once.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable

import pytest


def nothing() -> None:
    pass


def start_a_thread() -> None:
    thread = threading.Thread(target=nothing)
    thread.start()
    thread.join()


def process_starter(method: str) -> Callable[[], None]:
    context = multiprocessing.get_context(method)

    def start_a_process() -> None:
        process = context.Process(target=nothing)
        process.start()
        process.join()

    return start_a_process


def start_times(start_a_process: Callable[[], None], rounds: int) -> dict[str, list[float]]:
    """Seconds per start, one process and ten threads in turn, so both see the same noise."""
    times: dict[str, list[float]] = {"process": [], "thread": []}
    for _ in range(rounds):
        for kind, start, repeat in (
            ("process", start_a_process, 1),
            ("thread", start_a_thread, 10),
        ):
            for _ in range(repeat):
                began = time.perf_counter()
                start()
                times[kind].append(time.perf_counter() - began)
    return times


@pytest.mark.parametrize("method", multiprocessing.get_all_start_methods())
def test_a_process_start_costs_more_than_a_thread_start(method):
    start_a_process = process_starter(method)
    start_a_process()  # the first start of forkserver also starts its server: not counted
    times = start_times(start_a_process, rounds=5)
    process, thread = min(times["process"]), min(times["thread"])  # noise only ever adds
    print(
        f"{method}: process start {process * 1e3:.2f} ms (median "
        f"{statistics.median(times['process']) * 1e3:.2f}), thread start {thread * 1e3:.3f} ms"
        f" (median {statistics.median(times['thread']) * 1e3:.3f}): x{process / thread:.0f}"
    )
    assert process > 3 * thread
