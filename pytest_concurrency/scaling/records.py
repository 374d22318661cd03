"""The records a measurement hands to statistics and verdicts: pure data, no threads.

No pytest import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class WorkerSample(NamedTuple):
    """One worker's batch of calls in one round, on the ``perf_counter`` clock."""

    start: float
    end: float
    cpu: float
    run_delay: float | None

    @property
    def elapsed(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class WaitSite:
    """Where worker threads were seen waiting: the code location and its share of sightings."""

    location: str
    source: str
    share: float
    sightings: int

    def describe(self) -> str:
        text = f"{self.location}"
        if self.source:
            text += f": `{self.source}`"
        return f"{text} ({self.share:.0%} of {self.sightings} sightings of a waiting worker)"
