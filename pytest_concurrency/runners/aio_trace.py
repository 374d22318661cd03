"""The steps of an asyncio run, as a failure report shows them: which worker ran from which
``await`` to which, and which timers fired when, in the order the loop ran them.

A :class:`StepTrace` is kept for every run on the plugin's own loop, cheaply: for each task step
of a worker, the frame and line of the innermost user frame where the task waited (no source
text), and for each timer a run's task set, where it was set and when it was due. Only a failed
run's trace is turned into text (:meth:`StepTrace.lines`): a worker's consecutive steps that go
from one line to the same line fold into one (``x N``), and the last :data:`SHOWN_STEPS` lines
are shown. Whether the failure also happens without reordering is the report's next line
(``engine/aiorun.py``, from the rerun of ``runners/aio_rerun.py``).
"""

from __future__ import annotations

import asyncio
import linecache
import os
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from pytest_concurrency import messages
from pytest_concurrency.runners.aio_stacks import awaiting_frames, is_own_frame

SHOWN_STEPS = 20
SOURCE_WIDTH = 64
Site = tuple[str, int, str] | None
"""A user line: file, line number, function; None: not in the user's code (not started)."""


def site_of(frame: FrameType | None, lineno: int | None = None) -> Site:
    if frame is None:
        return None
    return (frame.f_code.co_filename, lineno or frame.f_lineno, frame.f_code.co_name)


def waiting_site(task: asyncio.Task[Any]) -> Site:
    """The innermost user frame where a suspended task waits; None before its first step."""
    frames, _ = awaiting_frames(task)
    return site_of(frames[-1]) if frames else None


def calling_site() -> Site:
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if not is_own_frame(frame.f_code.co_filename):
            return site_of(frame)
        frame = frame.f_back
    return None


def format_site(site: Site) -> str:
    if site is None:
        return messages.ASYNCIO_STEP_START
    filename, lineno, name = site
    source = linecache.getline(filename, lineno).split("  #")[0].strip()
    if len(source) > SOURCE_WIDTH:
        source = source[: SOURCE_WIDTH - 3] + "..."
    where = f"{os.path.basename(filename)}:{lineno}"
    return f"{where} {source}" if source else f"{where} in {name}"


@dataclass
class StepTrace:
    """One run's steps and timers (see the module's docstring)."""

    run_index: int
    started: float = 0.0  # loop.time() at the start of the run: timers fire at t from there
    tasks: dict[asyncio.Task[Any], int] = field(default_factory=dict)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    seen: set[asyncio.Handle] = field(default_factory=set)
    children: dict[asyncio.Task[Any], str] = field(default_factory=dict)
    made: dict[int, int] = field(default_factory=dict)

    def child(self, task: asyncio.Task[Any], worker: int) -> None:
        """A task a worker made (``gather``, ``create_task``): its steps are shown too."""
        self.made[worker] = self.made.get(worker, 0) + 1
        self.children[task] = messages.ASYNCIO_CHILD_TASK.format(
            worker=worker, task=self.made[worker]
        )

    def arrange(self, ready: deque[asyncio.Handle]) -> None:
        """The steps of the run's tasks about to run this pass, in the order they will run."""
        for handle in tuple(ready):  # a snapshot: call_soon_threadsafe may append meanwhile
            task = getattr(getattr(handle, "_callback", None), "__self__", None)
            if not isinstance(task, asyncio.Task) or handle in self.seen:
                continue
            who = self.children.get(task)
            if who is None and task in self.tasks:
                who = messages.ASYNCIO_WORKER.format(worker=self.tasks[task])
            if who is None:
                continue
            self.seen.add(handle)
            self.events.append(("step", who, waiting_site(task)))

    def timer(
        self, callback: Callable[..., object], due: float, clock: Callable[[], float]
    ) -> Callable[..., object]:
        """``callback`` of a run's timer due at ``due``, noting when it fires and how late."""
        site = calling_site()

        def fire(*args: Any) -> None:
            now = clock()
            self.events.append(("timer", now - self.started, site, max(0.0, now - due)))
            callback(*args)

        return fire

    def lines(self) -> list[str]:
        """The report's lines: the steps, folded, the last :data:`SHOWN_STEPS` of them."""
        steps = self._step_lines()
        shown = steps[-SHOWN_STEPS:]
        header = messages.ASYNCIO_STEPS_HEADER.format(
            run=self.run_index, shown=len(shown), total=len(steps)
        )
        return [header, *("    " + line for line in shown)]

    def _step_lines(self) -> list[str]:
        nexts = self._next_sites()
        folded: list[list[Any]] = []  # [text, count]
        for position, event in enumerate(self.events):
            if event[0] == "timer":
                _, when, site, late = event
                text = messages.ASYNCIO_TIMER_LINE.format(
                    when=when, where=format_site(site), late=late
                )
            else:
                _, who, site = event
                text = messages.ASYNCIO_STEP_LINE.format(
                    who=who, start=format_site(site), end=nexts[position]
                )
            if folded and folded[-1][0] == text:
                folded[-1][1] += 1
            else:
                folded.append([text, 1])
        return [text if count == 1 else f"{text} (x{count})" for text, count in folded]

    def _next_sites(self) -> dict[int, str]:
        """For each step, where its worker waited next (or that it ended there)."""
        nexts: dict[int, str] = {}
        last: dict[str, int] = {}
        for position, event in enumerate(self.events):
            if event[0] != "step":
                continue
            worker, site = event[1], event[2]
            if worker in last:
                nexts[last[worker]] = format_site(site)
            last[worker] = position
        for position in last.values():
            nexts[position] = messages.ASYNCIO_STEP_END
        return nexts
