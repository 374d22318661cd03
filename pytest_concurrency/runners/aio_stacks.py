"""Where asyncio mode's tasks wait, as the report shows it: the user's frames only.

The stack of a suspended task (its coroutine chain, innermost last, and what it awaits) and of
a blocked loop's thread, without the plugin's and asyncio's frames.
"""

from __future__ import annotations

import asyncio
import functools
import os
import traceback
from types import FrameType
from typing import Any

from pytest_concurrency.engine import owncode

NOT_STARTED = "  (not started: its first step never ran)\n"


_ASYNCIO_DIR = os.path.realpath(os.path.dirname(asyncio.__file__)) + os.sep


@functools.lru_cache(maxsize=4096)
def is_own_frame(filename: str) -> bool:
    """Frames of this plugin and of asyncio: how a task got to the user's code (asked for
    every step a run's trace keeps: remembered per file name)."""
    return owncode.is_plugin_file(filename) or os.path.realpath(filename).startswith(_ASYNCIO_DIR)


def awaiting_frames(task: asyncio.Task[Any]) -> tuple[list[FrameType], Any]:
    """The user's frames of a suspended task's coroutine chain, innermost last, and what the
    innermost awaits (None when the chain ends in a frame)."""
    frames: list[FrameType] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        if not is_own_frame(frame.f_code.co_filename):
            frames.append(frame)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return frames, awaited


def task_stack(task: asyncio.Task[Any]) -> str:
    """Where a suspended task waits: its coroutine chain, innermost last, and what it awaits."""
    frames, awaited = awaiting_frames(task)
    lines = ((frame, frame.f_lineno) for frame in frames)
    text = "".join(traceback.StackSummary.extract(lines).format())
    if isinstance(awaited, asyncio.Future):  # a task, or a bare future; C iterators hide theirs
        text += f"  awaiting {awaited!r}\n"
    return text or NOT_STARTED


def user_stack(frame: FrameType) -> str:
    """The stack of ``frame`` from the first frame of the code under test (pytest's and the
    plugin's frames that led to it left out), without asyncio's and the plugin's frames."""
    summary = traceback.StackSummary.extract(traceback.walk_stack(frame))
    summary.reverse()
    first_user = owncode.first_user_frame([entry.filename for entry in summary])
    kept = [
        entry
        for entry in summary[first_user or 0 :]
        if not is_own_frame(entry.filename) and "threading.py" not in entry.filename
    ]
    return "".join(traceback.StackSummary.from_list(kept).format())
