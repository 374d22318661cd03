"""A concurrent test whose interpreter died: what it was running, how it died, its failure
text, its report entry, and the note a crash's faulthandler dump carries in-process.

The facts are plain values: an isolated test's child (plugin/isolation.py) writes
:class:`SeriesFacts` as JSON before each series, and its supervisor turns the child's exit
status and faulthandler file into a :class:`Crash`. Pure module: no pytest import.
"""

from __future__ import annotations

import re
import signal
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pytest_concurrency import messages
from pytest_concurrency.engine.entries import KIND_CONCURRENT, ConcurrentEntry, Entry
from pytest_concurrency.engine.owncode import is_user_file

REPRODUCE_LINE = "  reproduce: {command}"
FRAME_LINE = re.compile(r'^\s+File "(?P<path>.*)", line \d+ in ')
LEFT_OUT = "  ({count} frames of pytest, pluggy, the plugin and the standard library left out)"
ONE_THREAD_ONLY = "<Cannot show all threads while the GIL is disabled>"
"""What faulthandler writes instead of the other threads on a free-threaded build."""
MAX_NOTE = 480
"""faulthandler writes at most 500 characters of a file name: a longer note loses its end."""


@dataclass(frozen=True)
class SeriesFacts:
    """What a series of a test runs with: enough to name it and to reproduce it."""

    mode: str
    workers: int
    runs: int
    budget: float | None
    seed: int  # the series seed
    reproduce_seed: int  # the seed the reproduction line gives (the session's, or the test's)
    reproduce: str
    shard: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeriesFacts:
        shard = data.get("shard")
        return cls(
            mode=str(data["mode"]),
            workers=int(data["workers"]),
            runs=int(data["runs"]),
            budget=None if data.get("budget") is None else float(data["budget"]),
            seed=int(data["seed"]),
            reproduce_seed=int(data["reproduce_seed"]),
            reproduce=str(data["reproduce"]),
            shard=None if shard is None else (int(shard[0]), int(shard[1])),
        )

    def where(self) -> str:
        return messages.TEST_CRASH_WHERE.format(
            mode=self.mode, workers=self.workers, seed=self.reproduce_seed
        )


@dataclass(frozen=True)
class Crash:
    """How the process running a test ended before it reported every phase."""

    pid: int
    phase: str  # "setup", "call" or "teardown"
    returncode: int  # as subprocess gives it: -N when signal N killed it
    stacks: str  # faulthandler's dump, "" when none was written

    @property
    def signal(self) -> str | None:
        return signal_name(-self.returncode) if self.returncode < 0 else None

    @property
    def exit_code(self) -> int | None:
        return None if self.returncode < 0 else self.returncode

    def describe(self) -> str:
        if self.returncode < 0:
            return messages.TEST_CRASH_SIGNAL.format(signal=self.signal, number=-self.returncode)
        return messages.TEST_CRASH_EXIT.format(code=self.returncode)

    def short(self) -> str:
        """For the summary: "SIGSEGV", or "exit code 3"."""
        return self.signal or f"exit code {self.returncode}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def crash_text(nodeid: str, crash: Crash, series: SeriesFacts) -> str:
    """The failure report of the phase the test died in: how, every thread's stack, the
    reproduction line."""
    lines = [
        messages.TEST_CRASHED.format(
            nodeid=nodeid,
            phase=crash.phase,
            how=crash.describe(),
            pid=crash.pid,
            where=series.where(),
        )
    ]
    if crash.stacks.strip():
        one = ONE_THREAD_ONLY in crash.stacks
        lines.append(messages.TEST_CRASH_ONE_STACK if one else messages.TEST_CRASH_STACKS)
        lines.extend("    " + line for line in user_frames(crash.stacks.rstrip().splitlines()))
    else:
        lines.append(messages.TEST_CRASH_NO_STACKS)
    lines.append(REPRODUCE_LINE.format(command=series.reproduce))
    return "\n".join(lines)


def user_frames(dump: list[str]) -> list[str]:
    """faulthandler's dump with each thread's innermost frame and the frames of the user's
    code (the JSON entry keeps the whole dump)."""
    kept: list[str] = []
    first, left_out = False, 0
    for line in dump:
        frame = FRAME_LINE.match(line)
        if frame is None:
            if left_out:
                kept.append(LEFT_OUT.format(count=left_out))
            kept.append(line)
            first, left_out = line.endswith("(most recent call first):"), 0
            continue
        path = frame.group("path")
        if first or is_user_file(path) or path.startswith("<pytest-concurrency"):
            kept.append(line)
        else:
            left_out += 1
        first = False
    if left_out:
        kept.append(LEFT_OUT.format(count=left_out))
    return kept


def crashed_entry(
    nodeid: str, crash: Crash, series: SeriesFacts, *, interrupted: str | None = None
) -> ConcurrentEntry:
    """The report entry of a test whose interpreter died: the series it ran, how it died;
    ``interrupted``: what stopped it from outside (pytest-timeout), then it did not crash."""
    entry: ConcurrentEntry = {
        "kind": KIND_CONCURRENT,
        "nodeid": nodeid,
        "mode": series.mode,
        "workers": series.workers,
        "runs_planned": None if series.budget is not None else series.runs,
        "budget": series.budget,
        "runs_done": 0,  # unknown: the runs it made died with it
        "calls": 0,
        "seed": series.seed,
        "failing_run": None,
        "failing_run_seed": None,
        "hung_workers": [],
        "failures": [],
        "collateral_workers": [],
        "observations": {},
        "reproduce": series.reproduce,
        "interrupted": interrupted,
        "isolated": True,
        "crashed": interrupted is None,
        "signal": crash.signal,
        "exit_code": crash.exit_code,
        "crash_phase": crash.phase,
        "crash_stacks": crash.stacks,
    }
    if series.shard is not None:
        entry["shard"], entry["shards"] = series.shard
        entry["base_nodeid"] = nodeid.rsplit("[", 1)[0] if "[" in nodeid else nodeid
    return entry


def worker_crash_entry(nodeid: str, series: SeriesFacts) -> ConcurrentEntry:
    """The entry of a test whose pytest-xdist worker died while it ran (not isolated): xdist
    says neither the signal nor the stacks (the worker printed them to its stderr)."""
    crash = Crash(pid=0, phase="call", returncode=0, stacks="")
    entry = crashed_entry(nodeid, crash, series)
    entry["isolated"], entry["exit_code"] = False, None
    return entry


def is_crashed(entry: Entry) -> bool:
    return bool(entry.get("crashed"))


def crash_summary_lines(entries: Iterable[ConcurrentEntry]) -> list[str]:
    """The summary's lines for the tests whose interpreter died."""
    lines: list[str] = []
    for entry in entries:
        if not entry.get("crashed"):
            continue
        code = entry.get("exit_code")
        how = entry.get("signal") or (
            f"exit code {code}" if code is not None else messages.CRASH_HOW_UNKNOWN
        )
        lines.append(
            messages.TEST_CRASH_SUMMARY.format(
                nodeid=entry["nodeid"],
                how=how,
                phase=entry.get("crash_phase", "call"),
                mode=entry["mode"],
                workers=entry["workers"],
            )
        )
        if entry.get("reproduce"):
            lines.append(f"    reproduce: {entry['reproduce']}")
    return lines


def crash_note(nodeid: str, series: SeriesFacts) -> str:
    """The pseudo file name of a frame on the main thread while a series runs in-process: if
    the interpreter dies, faulthandler prints it among the main thread's frames."""
    note = messages.CRASH_NOTE.format(
        nodeid=nodeid, where=series.where(), reproduce=series.reproduce
    )
    return note if len(note) <= MAX_NOTE else note[: MAX_NOTE - 4] + "...>"


def call_with_note(note: str, call: Callable[[], object]) -> object:
    """``call()`` from a frame whose file name is ``note`` (a ``<...>`` pseudo file, which
    linecache, coverage and the perturbation leave alone)."""
    __tracebackhide__ = True
    return noted(note)(call)


def noted(note: str) -> Callable[[Callable[[], object]], object]:
    """A function that calls its argument from a frame whose file name is ``note``."""
    code = _noted.__code__.replace(co_filename=note, co_name="concurrent_series")
    function: Callable[[Callable[[], object]], object] = types.FunctionType(
        code, _noted.__globals__
    )
    return function


def _noted(call: Callable[[], object]) -> object:
    __tracebackhide__ = True
    return call()
