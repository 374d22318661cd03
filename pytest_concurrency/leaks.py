"""Threads and processes that a test started and left running.

Pure module (no pytest import): take a snapshot before the test, compare after its teardown.
Child processes are found through ``/proc`` on Linux (so ``subprocess`` children count too),
else through :func:`multiprocessing.active_children`.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GRACE_SECONDS = 0.2
LEAK_MODES = ("warn", "fail", "off")
LEAK_MESSAGE = (
    "{nodeid} left {what} running after its teardown: {names}. Join threads and reap "
    "processes in the test or its fixtures (--concurrency-leaks=off silences this)"
)


@dataclass(frozen=True)
class Snapshot:
    threads: frozenset[int]
    children: frozenset[int]


@dataclass(frozen=True)
class Leaks:
    threads: tuple[str, ...]
    children: tuple[int, ...]

    def __bool__(self) -> bool:
        return bool(self.threads or self.children)

    def describe(self, nodeid: str) -> str:
        parts = []
        names: list[str] = []
        if self.threads:
            parts.append(f"{len(self.threads)} thread{'s' if len(self.threads) > 1 else ''}")
            names.extend(f"thread {name!r}" for name in self.threads)
        if self.children:
            parts.append(f"{len(self.children)} process{'es' if len(self.children) > 1 else ''}")
            names.extend(f"process {pid}" for pid in self.children)
        return LEAK_MESSAGE.format(nodeid=nodeid, what=" and ".join(parts), names=", ".join(names))


def child_pids() -> frozenset[int]:
    proc = Path(f"/proc/{os.getpid()}/task")
    if proc.is_dir():
        pids: set[int] = set()
        for task in proc.iterdir():
            try:
                text = (task / "children").read_text()
            except OSError:
                continue
            pids.update(int(pid) for pid in text.split())
        multiprocessing.active_children()  # reap finished multiprocessing children
        return frozenset(pid for pid in pids if _alive(pid)) - multiprocessing_helpers()
    return frozenset(p.pid for p in multiprocessing.active_children() if p.pid is not None)


def multiprocessing_helpers() -> frozenset[int]:
    """The fork server and the resource tracker: started once, they live as long as pytest
    (and end with it), so they are not a test's leak."""
    import sys

    pids: set[int | None] = set()
    forkserver = sys.modules.get("multiprocessing.forkserver")
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    if forkserver is not None:
        pids.add(getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None))
    if tracker is not None:
        pids.add(getattr(getattr(tracker, "_resource_tracker", None), "_pid", None))
    return frozenset(pid for pid in pids if isinstance(pid, int))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def take_snapshot() -> Snapshot:
    return Snapshot(
        threads=frozenset(t.ident for t in threading.enumerate() if t.ident is not None),
        children=child_pids(),
    )


def find_leaks(before: Snapshot, *, ignore: frozenset[int] = frozenset(),
               grace: float = GRACE_SECONDS) -> Leaks:
    """What is alive now and was not before, after giving it ``grace`` seconds to end."""
    deadline = time.monotonic() + grace
    threads = _new_threads(before, ignore)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    children = child_pids() - before.children
    while children and time.monotonic() < deadline:
        time.sleep(0.02)
        children = child_pids() - before.children
    return Leaks(
        threads=tuple(t.name for t in _new_threads(before, ignore)),
        children=tuple(sorted(children)),
    )


def _new_threads(before: Snapshot, ignore: frozenset[int]) -> list[threading.Thread]:
    return [
        thread for thread in threading.enumerate()
        if thread.ident not in before.threads and thread.ident not in ignore
        and thread.is_alive() and thread is not threading.current_thread()
    ]
