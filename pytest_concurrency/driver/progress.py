"""A live progress line for long stress runs: runs done, failures, time left.

Pure module: the session gives it a ``write`` function that reaches the terminal. Updates are
throttled, and nothing is written for a series that ends before ``delay`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pytest_concurrency.engine.outcomes import RunRecord, SeriesOutcome

DELAY_SECONDS = 1.0
INTERVAL_SECONDS = 0.5
PROGRESS = "concurrency {label}: {runs} runs, {calls} calls, {failures} {left}"


class LiveProgress:
    """Throttled progress of one series, shown only once it has run for ``delay`` seconds.

    ``write(line, first, last)`` rewrites the terminal's current line; ``first`` asks for a
    fresh line before it, ``last`` for a line break after it.
    """

    def __init__(
        self,
        write: Callable[[str, bool, bool], None],
        *,
        label: str,
        outcome: SeriesOutcome,
        deadline: float | None,
        delay: float = DELAY_SECONDS,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.write = write
        self.label = label
        self.outcome = outcome
        self.deadline = deadline
        self.clock = clock
        self.started = clock()
        self.delay = delay
        self.interval = interval
        self.next_update = self.started + delay
        self.shown = False

    def line(self) -> str:
        outcome = self.outcome
        failures = "a failure" if outcome.failed else "no failure"
        now = self.clock()
        if self.deadline is not None:
            left = f"{max(0.0, self.deadline - now):.0f}s left"
        elif outcome.runs_planned and outcome.runs_done:
            rate = outcome.runs_done / max(now - self.started, 1e-9)
            remaining = (outcome.runs_planned - outcome.runs_done) / rate
            left = f"{outcome.runs_done}/{outcome.runs_planned}, about {remaining:.0f}s left"
        else:
            left = ""
        return PROGRESS.format(
            label=self.label,
            runs=outcome.runs_done,
            calls=outcome.calls,
            failures=failures,
            left=left,
        ).rstrip()

    def update(self, record: RunRecord) -> None:
        now = self.clock()
        if now < self.next_update:
            return
        self.next_update = now + self.interval
        self.write(self.line(), not self.shown, False)
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.write(self.line().replace(" 0s left", "") + " - done", False, True)
