"""What happened in a concurrent test: every call that failed, grouped by where it came from.

Pure module (no pytest import). A failure is never dropped: each failing call is kept with its
worker and run, and failures are grouped by origin (exception type and the file:line that
raised), as Hypothesis groups its failures by ``InterestingOrigin``. The raising line is always
the user's: the innermost frame that is not the plugin's, pytest's or the standard library's.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import FrameType, TracebackType

from pytest_concurrency import messages
from pytest_concurrency.engine import owncode
from pytest_concurrency.engine.aiorun import LoopRun
from pytest_concurrency.engine.dataraces import DATA_RACE_ORIGIN, DataRace

OUTCOME_MODULE = "_pytest.outcomes"
SKIP_NAMES = frozenset({"Skipped"})
XFAIL_NAMES = frozenset({"XFailed"})


class CallKind(Enum):
    """How a single call ended."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    XFAILED = "xfailed"
    INTERRUPTED = "interrupted"


def is_pytest_outcome(exc: BaseException) -> bool:
    """pytest's own Failed, Skipped, XFailed or Exit (``pytest.fail()`` and the like)."""
    return any(base.__module__ == OUTCOME_MODULE for base in type(exc).__mro__)


TIMEOUT_FAILURE_MARK = "from pytest-timeout"
"""pytest-timeout fails a test with ``pytest.fail("Timeout (>Ns) from pytest-timeout.")``."""


def is_outside_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, an exit, or pytest-timeout's failure: raised into the test from outside, not by
    its code or the plugin's."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return True
    if not is_pytest_outcome(exc):
        return False
    return "Exit" in {base.__name__ for base in type(exc).__mro__} or (
        TIMEOUT_FAILURE_MARK in exception_text(exc)
    )


def without_traceback(exc: BaseException) -> BaseException:
    """A pytest outcome raised into a wait of the plugin's (pytest-timeout's failure), stripped
    of the frames of that wait: pytest shows the test's own frames above it. Anything else is
    left as it is."""
    return exc.with_traceback(None) if is_pytest_outcome(exc) else exc


def classify(exc: BaseException) -> CallKind:
    """Sort an exception into failure, skip/xfail signal or interrupt, without importing pytest."""
    cls = type(exc)
    if is_pytest_outcome(exc):
        names = {base.__name__ for base in cls.__mro__}
        if names & SKIP_NAMES:
            return CallKind.SKIPPED
        if names & XFAIL_NAMES:
            return CallKind.XFAILED
        if "Exit" in names:
            return CallKind.INTERRUPTED
    if isinstance(exc, KeyboardInterrupt):
        return CallKind.INTERRUPTED
    return CallKind.FAILED


@dataclass(frozen=True, order=True)
class FailureOrigin:
    """Where a failure came from: exception type and the line that raised it."""

    exc_type: str
    filename: str
    lineno: int

    def describe(self) -> str:
        return f"{self.exc_type} at {short_file_name(self.filename)}:{self.lineno}"


def short_file_name(filename: str) -> str:
    """The file's name, with its package's for a package's ``__init__.py``."""
    name = os.path.basename(filename)
    if name == "__init__.py":
        return os.path.join(os.path.basename(os.path.dirname(filename)), name)
    return name


def origin_of(exc: BaseException, tb: TracebackType | None = None) -> FailureOrigin:
    """The exception's type and its raising line in the user's code: see :func:`raising_line`."""
    tb = tb if tb is not None else exc.__traceback__
    filename, lineno = raising_line(tb)
    return FailureOrigin(exception_name(exc), filename, lineno)


def raising_line(tb: TracebackType | None) -> tuple[str, int]:
    """The innermost frame of ``tb`` in the user's code (:func:`.owncode.is_user_file`) that
    does not hide itself from pytest's traceback (``__tracebackhide__``): for ``pytest.fail()``,
    a standard library call or one of the plugin's tracked locks, the user's line that called
    it. Without one, the innermost frame of the user's code, else the innermost frame."""
    frames: list[tuple[FrameType, int]] = []
    while tb is not None:
        frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    if not frames:
        return "<unknown>", 0
    user = [entry for entry in frames if owncode.is_user_file(entry[0].f_code.co_filename)]
    shown = next((entry for entry in reversed(user) if not _hides_itself(entry[0])), None)
    frame, line = shown or (user[-1] if user else frames[-1])
    return frame.f_code.co_filename, line


def _hides_itself(frame: FrameType) -> bool:
    """``__tracebackhide__ = True`` in the frame (pytest's convention for assertion helpers)."""
    try:
        hidden = frame.f_locals.get("__tracebackhide__", frame.f_globals.get("__tracebackhide__"))
    except Exception:  # a frame whose locals cannot be read hides nothing
        return False
    return isinstance(hidden, int) and bool(hidden)


def exception_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, never raising: an exception whose ``__str__`` fails is still a failure to
    report, so its text falls back to what failed (as pytest shows an unprintable value)."""
    try:
        return str(exc)
    except Exception as error:
        return messages.UNPRINTABLE_EXCEPTION.format(
            exc_type=type(exc).__name__, error=_fallback_name(error)
        )


def _fallback_name(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:
        return type(error).__name__


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = exception_text(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class CallFailure:
    """One failing call: which worker, which run, what was raised.

    ``exception`` is the live exception for threads and asyncio; for processes it may be a
    stand-in rebuilt from ``traceback_text``.
    """

    worker: int
    run: int
    origin: FailureOrigin
    message: str
    exception: BaseException | None = None
    traceback_text: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException, *, worker: int, run: int) -> CallFailure:
        return cls(
            worker=worker,
            run=run,
            origin=origin_of(exc),
            message=first_line(exc),
            exception=exc,
        )


@dataclass
class RunRecord:
    """The outcome of one run: every worker's result, failures and skip signals."""

    index: int
    seed: int
    workers: int
    results: list[object] = field(default_factory=list)
    failures: list[CallFailure] = field(default_factory=list)
    signals: list[tuple[int, BaseException]] = field(default_factory=list)
    interrupt: BaseException | None = None
    hung_workers: list[int] = field(default_factory=list)
    hung_after: float | None = None  # seconds the hung run was given (less near pytest-timeout)
    stacks: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # lines a schedule adds to the report
    explain: Callable[[], list[str]] | None = None  # more lines, made only when asked for
    collateral: list[CallFailure] = field(default_factory=list)  # gave up at the barrier
    data_races: list[DataRace] = field(default_factory=list)  # found in this run (threads)
    loop: LoopRun | None = None  # asyncio mode: the run's clock, changes and injections

    @property
    def failed(self) -> bool:
        return bool(self.failures) or bool(self.hung_workers)


def is_race_failure(failure: CallFailure) -> bool:
    """The stand-in failure of a run failed for its data races (no call raised it)."""
    return failure.origin.exc_type == DATA_RACE_ORIGIN


def call_failures(failures: Iterable[CallFailure]) -> list[CallFailure]:
    """The failures some call raised: a data race's stand-in left out."""
    return [failure for failure in failures if not is_race_failure(failure)]


@dataclass(frozen=True)
class FailureGroup:
    """All failures of one origin."""

    origin: FailureOrigin
    failures: tuple[CallFailure, ...]

    @property
    def count(self) -> int:
        return len(self.failures)

    @property
    def workers(self) -> list[int]:
        return sorted({failure.worker for failure in self.failures})

    @property
    def runs(self) -> list[int]:
        return sorted({failure.run for failure in self.failures})

    @property
    def first(self) -> CallFailure:
        return self.failures[0]


def group_failures(failures: Iterable[CallFailure]) -> list[FailureGroup]:
    """Group by origin, most frequent first, ties in order of first appearance."""
    buckets: dict[FailureOrigin, list[CallFailure]] = {}
    for failure in failures:
        buckets.setdefault(failure.origin, []).append(failure)
    groups = [FailureGroup(origin, tuple(items)) for origin, items in buckets.items()]
    order = {origin: position for position, origin in enumerate(buckets)}
    groups.sort(key=lambda group: (-group.count, order[group.origin]))
    return groups


@dataclass
class Observations:
    """The outcome histogram of ``run.observe(value)`` (jcstress-style)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, value: object) -> None:
        self.counts[repr(value)] += 1

    def most_common(self) -> list[tuple[str, int]]:
        return self.counts.most_common()

    def __bool__(self) -> bool:
        return bool(self.counts)


@dataclass
class SeriesOutcome:
    """What a concurrent test did across all its runs."""

    mode: str
    workers: int
    runs_planned: int | None
    seed: int
    runs_done: int = 0
    calls: int = 0
    failing_run: RunRecord | None = None
    signals: list[tuple[int, BaseException]] = field(default_factory=list)
    observations: Observations = field(default_factory=Observations)
    budget: float | None = None
    interrupt: BaseException | None = None
    data_races: list[DataRace] = field(default_factory=list)  # every run's, each once
    clock: str | None = None  # asyncio mode: the clock of its runs ("virtual" or "real")

    @property
    def failed(self) -> bool:
        return self.failing_run is not None

    def add_data_races(self, races: Iterable[DataRace]) -> None:
        known = {race.key for race in self.data_races}
        for race in races:
            if race.key not in known:
                known.add(race.key)
                self.data_races.append(race)

    def failures(self) -> Sequence[CallFailure]:
        return self.failing_run.failures if self.failing_run else ()


def add_note(exc: BaseException, note: str) -> None:
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        exc.__notes__ = notes  # type: ignore[attr-defined,unused-ignore]
    notes.append(note)
