"""An asyncio run as its report and its JSON entry show it: the loop's clock, what the run
changed from plain asyncio (the task order, late timers, injections), the injections with their
lines, and whether the failure also happens without reordering (issue 19).

"Without reordering" is asyncio's own FIFO order on the real clock, every timer on time and
nothing injected. It is judged, in this order of preference, from a rerun of the failing test
made that way (``runners/aio_rerun.py``: the marker's series only, and only when the rerun is
short), from the failing run itself when it already ran that way, or, when the rerun is not
made, from run 0 (FIFO order, exact timers, nothing injected, on the test's clock), which the
report then names as what was judged instead. Pure module: no pytest import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pytest_concurrency import messages
from pytest_concurrency.engine.entries import ConcurrentEntry, InjectionEntry

VIRTUAL = "virtual"
REAL = "real"
KIND_CANCEL = "cancel"
KIND_TIMEOUT = "timeout"
FROM_RERUN = "rerun"
FROM_FAILING_RUN = "failing run"
FROM_RUN_ZERO = "run 0"


@dataclass(frozen=True)
class Injection:
    """A cancellation (``kind="cancel"``) or an early timeout (``"timeout"``) injected in a run,
    at a user's line."""

    run: int
    worker: int
    file: str
    line: int
    kind: str

    def entry(self) -> InjectionEntry:
        return {
            "run": self.run,
            "worker": self.worker,
            "file": self.file,
            "line": self.line,
            "kind": self.kind,
        }


@dataclass
class LoopRun:
    """The facts of one asyncio run, and (a failing run's) the verdict on plain order."""

    clock: str  # VIRTUAL or REAL
    reordered_tasks: bool = False  # the seed ordered its ready task steps
    late_timers: bool = False  # the seed moved its timers
    seconds: float = 0.0  # how long the run took on the loop's clock
    injections: list[Injection] = field(default_factory=list)
    fails_without_reordering: bool | None = None
    judged_from: str | None = None  # FROM_RERUN, FROM_FAILING_RUN, FROM_RUN_ZERO
    rerun_skipped: str | None = None  # why no rerun was made (None: made, or not needed)

    @property
    def plain(self) -> bool:
        """FIFO order, every timer on time, nothing injected (on either clock)."""
        return not (self.reordered_tasks or self.late_timers or self.injections)

    def changes(self) -> str:
        """What this run did that plain asyncio on the real clock does not."""
        parts = [
            text
            for applies, text in (
                (self.clock == VIRTUAL, messages.CHANGE_VIRTUAL_CLOCK),
                (self.reordered_tasks, messages.CHANGE_TASK_ORDER),
                (self.late_timers, messages.CHANGE_LATE_TIMERS),
                (bool(self.injections), messages.CHANGE_INJECTIONS),
            )
            if applies
        ]
        if len(parts) < 2:
            return "".join(parts)
        return ", ".join(parts[:-1]) + " or " + parts[-1]

    def rerun_result(self, failure: str | None) -> list[str]:
        """The verdict from the real-clock FIFO rerun: ``failure`` says what failed in it (None:
        it passed)."""
        self.judged_from = FROM_RERUN
        self.fails_without_reordering = failure is not None
        if failure is not None:
            return [messages.FAILS_WITHOUT_REORDERING.format(failure=failure)]
        return [messages.PASSES_WITHOUT_REORDERING.format(changes=self.changes())]

    def judged_without_rerun(self, why: str | None) -> list[str]:
        """The verdict when no rerun is made (``why``; None: the run itself was plain on the
        real clock): from this run when it was plain, else from run 0, which passed."""
        self.rerun_skipped = why
        if self.plain:
            self.judged_from, self.fails_without_reordering = FROM_FAILING_RUN, True
            if why is None:
                return [messages.FAILS_IN_PLAIN_RUN]
            return [messages.FAILS_IN_PLAIN_VIRTUAL_RUN.format(why=why)]
        self.judged_from, self.fails_without_reordering = FROM_RUN_ZERO, False
        return [
            messages.PASSED_IN_RUN_ZERO.format(
                why=why or "", clock=self.clock, changes=self.changes()
            )
        ]

    def write(self, entry: ConcurrentEntry) -> None:
        """Put this run's keys into an asyncio test's entry."""
        entry["clock"] = self.clock
        entry["injections"] = [injection.entry() for injection in self.injections]
        entry["fails_without_reordering"] = self.fails_without_reordering
        entry["without_reordering_from"] = self.judged_from
        entry["rerun_skipped"] = self.rerun_skipped


def write_keys(entry: ConcurrentEntry, clock: str | None, failing: LoopRun | None) -> None:
    """An asyncio test's keys: its clock (None: no run was made: the default's), and for a
    failure the failing run's injections and the verdict on plain order."""
    (failing or LoopRun(clock or VIRTUAL)).write(entry)
