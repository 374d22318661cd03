"""Threads, processes and asyncio tasks that a test started and left running.

Pure module (no pytest import): take a snapshot before the test, compare after its teardown.
Child processes are found through ``/proc`` on Linux (so ``subprocess`` children count too),
else through :func:`multiprocessing.active_children`. Asyncio tasks live on the plugin's event
loop, which ends with the test's runner: the tasks still pending there when it closes are
noted (:func:`note_leftover_tasks`, called by the asyncio mode before it cancels them) and
reported here with the other leaks.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_concurrency.messages import LEAK_MESSAGE

GRACE_SECONDS = 0.2


class TaskLedger:
    """The tasks found pending when a plugin event loop closed, since the last snapshot.

    Tests run one after another, so only the newest snapshot is ever compared: taking one
    forgets what came before it, and the ledger holds one test's leftovers at most."""

    def __init__(self) -> None:
        self._first = 0  # how many names were forgotten before ``_names[0]``
        self._names: list[str] = []

    def note(self, names: Iterable[str]) -> None:
        self._names.extend(names)

    def mark(self) -> int:
        """Forget what was noted so far; the position from which the next names count."""
        self._first += len(self._names)
        self._names.clear()
        return self._first

    def since(self, mark: int) -> tuple[str, ...]:
        return tuple(self._names[max(0, mark - self._first) :])

    def __len__(self) -> int:
        return len(self._names)


LEFTOVER_TASKS = TaskLedger()


@dataclass(frozen=True)
class Snapshot:
    threads: frozenset[int]
    children: frozenset[int]
    tasks_seen: int = 0


@dataclass(frozen=True)
class Leaks:
    threads: tuple[str, ...]
    children: tuple[int, ...]
    tasks: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.threads or self.children or self.tasks)

    def describe(self, nodeid: str) -> str:
        parts = []
        names: list[str] = []
        if self.threads:
            parts.append(f"{len(self.threads)} thread{'s' if len(self.threads) > 1 else ''}")
            names.extend(f"thread {name!r}" for name in self.threads)
        if self.children:
            parts.append(f"{len(self.children)} process{'es' if len(self.children) > 1 else ''}")
            names.extend(f"process {pid}" for pid in self.children)
        if self.tasks:
            parts.append(f"{len(self.tasks)} asyncio task{'s' if len(self.tasks) > 1 else ''}")
            names.extend(f"task {name}" for name in self.tasks)
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


def describe_task(task: Any) -> str:
    """ "'Task-7' (poll_forever at feed.py:12)": the task's name and where its coroutine waits."""
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", type(coro).__qualname__)
    frame = getattr(coro, "cr_frame", None)
    where = f" at {os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}" if frame else ""
    return f"{task.get_name()!r} ({name}{where})"


def note_leftover_tasks(tasks: Iterable[Any]) -> None:
    """Tasks still pending when a plugin event loop closes: the test (or its fixtures) started
    them and never awaited or cancelled them. Called before the loop cancels them."""
    LEFTOVER_TASKS.note(describe_task(task) for task in tasks)


def take_snapshot() -> Snapshot:
    return Snapshot(
        threads=frozenset(t.ident for t in threading.enumerate() if t.ident is not None),
        children=child_pids(),
        tasks_seen=LEFTOVER_TASKS.mark(),
    )


def find_leaks(
    before: Snapshot, *, ignore: frozenset[int] = frozenset(), grace: float = GRACE_SECONDS
) -> Leaks:
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
        tasks=LEFTOVER_TASKS.since(before.tasks_seen),
    )


def _new_threads(before: Snapshot, ignore: frozenset[int]) -> list[threading.Thread]:
    return [
        thread
        for thread in threading.enumerate()
        if thread.ident not in before.threads
        and thread.ident not in ignore
        and thread.is_alive()
        and thread is not threading.current_thread()
    ]
