"""Run one round of a scaling measurement: N workers, in threads or in a persistent process pool.

This is the measuring half of scaling, kept apart from the statistics and the report
(:mod:`~pytest_concurrency.scaling.stats`, :mod:`~pytest_concurrency.scaling.report`) so those
get plain unit tests on synthetic numbers; the method is described in
:mod:`pytest_concurrency.scaling.api`.
Each round starts its workers together (a barrier for threads, a shared start time for
processes), lets each call the unit a fixed number of times, and returns one
:class:`WorkerSample` per worker. Nothing here waits without a deadline: a round that
overruns raises :class:`ScalingMeasurementError`, abandoning hung threads (they are daemons)
and terminating the pool's processes, which :meth:`ProcessPool.close` always reaps.

Pure module: no pytest import.
"""

from __future__ import annotations

import contextlib
import linecache
import multiprocessing
import os
import pickle
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from pytest_concurrency.engine import owncode
from pytest_concurrency.errors import ScalingMeasurementError, ScalingUsageError, ScalingWorkError
from pytest_concurrency.scaling import child as scaling_child
from pytest_concurrency.scaling import messages as scaling_messages
from pytest_concurrency.scaling.records import WaitSite, WorkerSample

DEFAULT_START_METHOD = "spawn"
"""Fresh interpreters: no fork of a threaded pytest process, the same on every platform."""
START_LEAD_SECONDS = 0.03
"""How far ahead of now a process round's shared start time is set."""
POOL_START_TIMEOUT = 60.0
"""Longest wait for a worker process to start, import and warm up the unit."""
REAP_TIMEOUT = 2.0
"""Longest wait for a worker process to exit at each step of stopping the pool."""
SAMPLE_INTERVAL = 0.002
"""Time between two looks at the worker threads' stacks when looking for a wait site."""


@dataclass(frozen=True)
class Unit:
    """The unit of work: what every worker calls, the same number of times."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def payload(self) -> bytes:
        """The unit pickled for worker processes (pickling errors propagate to the caller)."""
        return pickle.dumps((self.fn, self.args, self.kwargs))


# --------------------------------------------------------------------------- machine load


@dataclass(frozen=True)
class CpuCounters:
    """System-wide CPU time counters from ``/proc/stat`` (clock ticks)."""

    busy: int
    steal: int
    total: int


def read_cpu_counters(path: str = "/proc/stat") -> CpuCounters | None:
    """The aggregate ``cpu`` line of ``/proc/stat``, or None where there is no such file."""
    try:
        with open(path) as stat:
            fields = stat.readline().split()
        values = [int(value) for value in fields[1:]]
    except (OSError, ValueError):
        return None
    if len(values) < 8:
        return None
    idle = values[3] + values[4]
    steal = values[7]
    total = sum(values[:8])
    return CpuCounters(busy=total - idle - steal, steal=steal, total=total)


def steal_share(before: CpuCounters | None, after: CpuCounters | None) -> float | None:
    """Share of CPU time the hypervisor took from this machine between two readings."""
    if before is None or after is None or after.total <= before.total:
        return None
    return (after.steal - before.steal) / (after.total - before.total)


# --------------------------------------------------------------------------- wait sites


class WaitSampler:
    """Look at worker threads' stacks now and then; count where they stand still.

    A worker seen at the same instruction twice in a row, a few milliseconds apart, is waiting
    there (for a lock, a condition, I/O, or the GIL). The place counted is the innermost frame
    of the user's code: frames of this package and of the standard library (``threading``,
    ``queue``) are skipped outwards, so that a wait inside ``Condition.wait`` is named by the
    line that called it.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, int]] = {}
        self._sites: Counter[tuple[str, int, str]] = Counter()

    def look(self, idents: Sequence[int]) -> None:
        frames = sys._current_frames()
        for ident in idents:
            frame = frames.get(ident)
            if frame is None:
                continue
            position = (id(frame.f_code), frame.f_lasti)
            if self._last.get(ident) == position:
                site = self._user_frame(frame)
                if site is not None:
                    self._sites[site] += 1
            self._last[ident] = position
        del frames

    def _user_frame(self, frame: FrameType | None) -> tuple[str, int, str] | None:
        while frame is not None:
            filename = frame.f_code.co_filename
            if not self._skipped(filename):
                return (filename, frame.f_lineno or 0, frame.f_code.co_name)
            frame = frame.f_back
        return None

    def _skipped(self, filename: str) -> bool:
        """Frames that are not code under test: see :func:`.owncode.is_user_file`."""
        return not owncode.is_user_file(filename)

    def busiest(self) -> WaitSite | None:
        """The place most waiting sightings were at, or None when there were none."""
        total = sum(self._sites.values())
        if total == 0:
            return None
        (filename, line, function), count = self._sites.most_common(1)[0]
        source = linecache.getline(filename, line).strip()
        location = f"{os.path.basename(filename)}:{line} in {function}"
        return WaitSite(location=location, source=source, share=count / total, sightings=total)


# --------------------------------------------------------------------------- threads


def run_thread_round(
    unit: Unit,
    workers: int,
    calls: int,
    deadline: float,
    sampler: WaitSampler | None = None,
) -> list[WorkerSample]:
    """Run ``workers`` threads that start together and call the unit ``calls`` times each."""
    barrier = threading.Barrier(workers + 1)
    samples: list[WorkerSample | None] = [None] * workers
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait(timeout=deadline)
        except threading.BrokenBarrierError:
            return
        try:
            sample = scaling_child.run_batch(
                unit.fn, unit.args, unit.kwargs, calls, time.thread_time
            )
            samples[index] = WorkerSample(*sample)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(index,), name=f"scaling-{index}", daemon=True)
        for index in range(workers)
    ]
    for thread in threads:
        thread.start()
    ends_at = time.monotonic() + deadline
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=deadline)
    _watch_threads(threads, ends_at, sampler)
    alive = sum(thread.is_alive() for thread in threads)
    if alive:
        barrier.abort()
        extra = scaling_messages.SCALING_ABANDONED_THREADS.format(count=alive)
        raise ScalingMeasurementError(
            scaling_messages.SCALING_ROUND_TIMEOUT.format(
                workers=workers, mode="threads", deadline=deadline, extra=extra
            )
        )
    if errors:
        detail = f"{type(errors[0]).__name__}: {errors[0]}"
        raise ScalingWorkError(
            scaling_messages.SCALING_WORKER_RAISED.format(mode="threads", detail=detail)
        ) from errors[0]
    return [sample for sample in samples if sample is not None]


def _watch_threads(
    threads: list[threading.Thread], ends_at: float, sampler: WaitSampler | None
) -> None:
    """Wait for the threads until ``ends_at``; meanwhile let the sampler look at them."""
    if sampler is not None:
        idents = [thread.ident for thread in threads if thread.ident is not None]
        while any(thread.is_alive() for thread in threads) and time.monotonic() < ends_at:
            sampler.look(idents)
            time.sleep(SAMPLE_INTERVAL)
    for thread in threads:
        thread.join(timeout=max(0.0, ends_at - time.monotonic()))


# --------------------------------------------------------------------------- processes


class ProcessPool:
    """Worker processes started once per measurement, each loaded with the unit of work.

    Each process serves rounds over its own pipe (see :mod:`pytest_concurrency.scaling.child`),
    so a round with N workers runs on exactly N distinct processes. Use as a context manager:
    leaving it stops, and if need be terminates and kills, every process and joins it.
    """

    def __init__(self, size: int, unit: Unit, start_method: str = DEFAULT_START_METHOD) -> None:
        self.size = size
        self._payload = unit.payload()
        self._context: Any = multiprocessing.get_context(start_method)
        self._processes: list[Any] = []
        self._conns: list[Any] = []

    def __enter__(self) -> ProcessPool:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        for index in range(self.size):
            parent_end, child_end = self._context.Pipe()
            process = self._context.Process(
                target=scaling_child.child_main,
                args=(child_end,),
                name=f"pytest-concurrency-scaling-{index}",
            )
            process.start()
            child_end.close()
            self._processes.append(process)
            self._conns.append(parent_end)
        for conn in self._conns:
            conn.send(("load", self._payload))
        ends_at = time.monotonic() + POOL_START_TIMEOUT
        for index in range(self.size):
            reply = self._receive(index, ends_at, self.size, POOL_START_TIMEOUT)
            if reply[0] == "unloadable":
                raise ScalingUsageError(
                    scaling_messages.SCALING_CHILD_LOAD_FAILED.format(detail=reply[1])
                )
            if reply[0] == "error":
                raise ScalingWorkError(
                    scaling_messages.SCALING_WORKER_RAISED.format(mode="processes", detail=reply[1])
                )

    def run_round(self, workers: int, calls: int, deadline: float) -> list[WorkerSample]:
        """Run one round on the first ``workers`` processes; they start at one shared time."""
        start_at = time.perf_counter() + START_LEAD_SECONDS + 0.001 * workers
        for conn in self._conns[:workers]:
            conn.send(("run", start_at, calls))
        ends_at = time.monotonic() + deadline
        samples: list[WorkerSample] = []
        for index in range(workers):
            reply = self._receive(index, ends_at, workers, deadline)
            if reply[0] == "error":
                raise ScalingWorkError(
                    scaling_messages.SCALING_WORKER_RAISED.format(mode="processes", detail=reply[1])
                )
            samples.append(WorkerSample(*reply[1]))
        return samples

    def _receive(
        self, index: int, ends_at: float, workers: int, deadline: float
    ) -> tuple[str, Any]:
        """The reply of process ``index``; a timeout or a dead process raises."""
        conn = self._conns[index]
        if not conn.poll(max(0.0, ends_at - time.monotonic())):
            raise ScalingMeasurementError(
                scaling_messages.SCALING_ROUND_TIMEOUT.format(
                    workers=workers, mode="processes", deadline=deadline, extra=""
                )
            )
        try:
            reply: tuple[str, Any] = conn.recv()
        except (EOFError, OSError):
            process = self._processes[index]
            process.join(REAP_TIMEOUT)
            raise ScalingMeasurementError(
                scaling_messages.SCALING_WORKER_DIED.format(index=index, code=process.exitcode)
            ) from None
        return reply

    def close(self) -> None:
        """Stop every process: ask, then terminate, then kill; always join (reap) them."""
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        for process in self._processes:
            process.join(REAP_TIMEOUT)
        for stop in ("terminate", "kill"):
            for process in self._processes:
                if process.is_alive():
                    getattr(process, stop)()
                    process.join(REAP_TIMEOUT)
        for conn in self._conns:
            conn.close()
        self._processes.clear()
        self._conns.clear()
