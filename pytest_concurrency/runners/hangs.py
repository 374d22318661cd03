"""What a hung worker thread is doing: its stack in the user's code, and the lock it waits on.

Used by the thread runner when a run outlives its deadline. The stack leaves out the frames of
``threading`` and of this plugin (the worker loop, the tracked primitives), so that it starts
and ends in the user's code; when the thread waits on a lock that the lock-order watch tracks
(thread mode with ``lock_order`` not ``off``, the default), one more line names the lock, where
the thread waits for it, who holds it and where they took it. No pytest import.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Mapping
from types import FrameType

from pytest_concurrency import messages
from pytest_concurrency.engine import owncode

_THREADING_FILE = os.path.realpath(threading.__file__)


def is_own_frame(filename: str) -> bool:
    """Frames of ``threading`` and of this plugin: how a worker got to the user's code."""
    path = os.path.realpath(filename)
    return path == _THREADING_FILE or owncode.is_plugin_file(path)


def user_stack(frame: FrameType) -> str:
    """The stack of ``frame`` from the first frame of the code under test (without the
    plugin's and ``threading``'s frames before it when there is none), and without the
    plugin's and ``threading``'s frames at its inner end (all of it when nothing else is
    left), innermost call last, as ``traceback`` prints it."""
    summary = traceback.extract_stack(frame)
    start, end = 0, len(summary)
    first_user = owncode.first_user_frame([entry.filename for entry in summary])
    if first_user is not None:
        start = first_user
    while start < end and is_own_frame(summary[start].filename):
        start += 1
    while end > start and is_own_frame(summary[end - 1].filename):
        end -= 1
    kept = summary[start:end] if start < end else summary
    return "".join(traceback.format_list(kept))


def lock_wait(ident: int, workers: Mapping[int, int]) -> str | None:
    """The line naming the tracked lock thread ``ident`` waits on, if it waits on one.

    ``workers`` maps thread idents to worker indexes, to name the holder.
    """
    tracker = sys.modules.get("pytest_concurrency.races.tracker")
    if tracker is None:  # lock tracking never ran in this process
        return None
    waiting = tracker.TRACKER.waiting_on(ident)
    if waiting is None:
        return None
    from pytest_concurrency.races.lockgraph import format_site

    what, site, holder, taken_at = waiting
    if holder == tracker.UNKNOWN_HOLDER:
        return messages.HANG_WAITS_ON_UNTRACKED_HOLDER.format(what=what, site=format_site(site))
    if holder is None:
        return messages.HANG_WAITS_ON_FREE_LOCK.format(what=what, site=format_site(site))
    return messages.HANG_WAITS_ON_LOCK.format(
        what=what,
        site=format_site(site),
        holder=thread_name(holder, workers),
        taken_at=format_site(taken_at),
    )


def thread_name(ident: int, workers: Mapping[int, int]) -> str:
    """ "worker 2" for a worker of the run, else the thread's name."""
    if ident in workers:
        return f"worker {workers[ident]}"
    for thread in threading.enumerate():
        if thread.ident == ident:
            return f"thread {thread.name!r}"
    return f"a thread that has ended (ident {ident})"


def describe_hung_thread(frame: FrameType, ident: int, workers: Mapping[int, int]) -> str:
    """Stack and, where known, the lock waited on: the report's "stuck here" for a worker."""
    text = user_stack(frame)
    wait = lock_wait(ident, workers)
    return text + wait + "\n" if wait else text
