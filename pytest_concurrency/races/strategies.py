"""Who runs next: the seeded choices of the controlled scheduler, and PCT's guarantee.

The controlled scheduler (:mod:`pytest_concurrency.races.scheduler`) runs one worker at a time and,
at each *decision* (a scheduling point where two or more workers could run), asks its strategy
which worker goes on. Two strategies:

* :class:`RandomStrategy` picks uniformly among the workers that can run, at every decision.
* :class:`PCTStrategy` is Probabilistic Concurrency Testing (Burckhardt, Kothari, Musuvathi and
  Nagarakatte, ASPLOS 2010): every worker gets a distinct random priority, the highest-priority
  worker that can run always runs, and at ``d - 1`` decisions drawn uniformly from ``1..k`` the
  running worker drops below every other. For ``n`` workers and runs of at most ``k``
  decisions, each run exposes a given bug of depth ``d`` (one that needs ``d`` ordering
  constraints to show) with probability at least ``1 / (n * k**(d-1))``.

Like Shuttle and Coyote, ``k`` is measured: the first run has no change points (it measures),
later runs draw their change points from the longest run seen so far, and only runs whose
decisions fit in that ``k`` count towards the stated bound. A worker that gives way on purpose
(``time.sleep``) drops below the others too, so that spin-waits do not starve PCT; and past a
horizon of decisions a run falls back to random choices, so that a spinning worker cannot keep
the token for ever. Pure module: no pytest import.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

STRATEGY_RANDOM = "random"
STRATEGY_PCT = "pct"
STRATEGIES = (STRATEGY_RANDOM, STRATEGY_PCT)
DEFAULT_DEPTH = 3
MAX_DEPTH = 8
HORIZON_FACTOR = 4
MIN_HORIZON = 2_000
"""Past ``max(HORIZON_FACTOR * k, MIN_HORIZON)`` decisions a PCT run picks at random."""


class Strategy(Protocol):
    """The seeded choice of the next worker, one run at a time."""

    name: str

    def begin_run(self, workers: int, seed: int) -> None:
        """A new run of ``workers`` workers, drawing every choice from ``seed``."""

    def pick(self, enabled: Sequence[int], running: int | None) -> int:
        """Which of ``enabled`` (two or more, ascending) runs next; ``running`` is at a point."""

    def gave_way(self, worker: int) -> None:
        """``worker`` gave way on purpose (a sleep or a yield)."""

    def end_run(self, decisions: int) -> RunCoverage:
        """The run made ``decisions`` decisions: what it guarantees."""


@dataclass(frozen=True)
class RunCoverage:
    """What one finished run contributes to the stated guarantee."""

    covered: bool  # the run's decisions fitted the k its change points were drawn from
    steps_bound: int  # that k (0 when not covered)


NOT_COVERED = RunCoverage(covered=False, steps_bound=0)


class RandomStrategy:
    """Uniform choice among the workers that can run, at every decision."""

    name = STRATEGY_RANDOM

    def __init__(self) -> None:
        self._random = random.Random(0)

    def begin_run(self, workers: int, seed: int) -> None:
        self._random.seed(seed)

    def pick(self, enabled: Sequence[int], running: int | None) -> int:
        return enabled[self._random.randrange(len(enabled))]

    def gave_way(self, worker: int) -> None:
        return None

    def end_run(self, decisions: int) -> RunCoverage:
        return NOT_COVERED


class PCTStrategy:
    """Probabilistic Concurrency Testing with a measured bound on the decisions per run."""

    name = STRATEGY_PCT

    def __init__(self, depth: int = DEFAULT_DEPTH) -> None:
        if not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"PCT depth must be from 1 to {MAX_DEPTH}, not {depth}")
        self.depth = depth
        self.max_decisions = 0  # the measured k: the most decisions any run made
        self._random = random.Random(0)
        self._priority: dict[int, int] = {}
        self._change_points: frozenset[int] = frozenset()
        self._decisions = 0
        self._lowest = 0
        self._steps_bound = 0
        self._horizon = MIN_HORIZON

    @property
    def change_points(self) -> frozenset[int]:
        return self._change_points

    def priorities(self) -> dict[int, int]:
        """Worker -> priority (higher runs first), as of now."""
        return dict(self._priority)

    def begin_run(self, workers: int, seed: int) -> None:
        self._random.seed(seed)
        order = list(range(workers))
        self._random.shuffle(order)
        self._priority = {worker: rank for rank, worker in enumerate(order)}
        self._lowest = 0
        self._decisions = 0
        self._steps_bound = self.max_decisions
        self._change_points = frozenset(change_points(self._random, self.depth, self._steps_bound))
        self._horizon = max(HORIZON_FACTOR * self._steps_bound, MIN_HORIZON)

    def pick(self, enabled: Sequence[int], running: int | None) -> int:
        self._decisions += 1
        if self._decisions > self._horizon:
            return enabled[self._random.randrange(len(enabled))]
        if running is not None and self._decisions in self._change_points:
            self._lower(running)
        priority = self._priority
        return max(enabled, key=priority.__getitem__)

    def gave_way(self, worker: int) -> None:
        self._lower(worker)

    def end_run(self, decisions: int) -> RunCoverage:
        covered = 0 < decisions <= self._steps_bound and decisions <= self._horizon
        self.max_decisions = max(self.max_decisions, decisions)
        return RunCoverage(covered, self._steps_bound) if covered else NOT_COVERED

    def _lower(self, worker: int) -> None:
        self._lowest -= 1
        self._priority[worker] = self._lowest


def change_points(rng: random.Random, depth: int, steps_bound: int) -> list[int]:
    """``depth - 1`` distinct decisions drawn uniformly from ``1..steps_bound`` (fewer if short)."""
    if steps_bound < 1:
        return []
    return sorted(rng.sample(range(1, steps_bound + 1), min(depth - 1, steps_bound)))


def make_strategy(name: str, depth: int = DEFAULT_DEPTH) -> Strategy:
    if name == STRATEGY_RANDOM:
        return RandomStrategy()
    if name == STRATEGY_PCT:
        return PCTStrategy(depth)
    raise ValueError(f"unknown schedule strategy {name!r}; expected one of {STRATEGIES}")


# -- the guarantee ----------------------------------------------------------------------------


def pct_run_probability(workers: int, steps: int, depth: int) -> float:
    """PCT's lower bound on the chance that one run exposes a given depth-``depth`` bug."""
    if workers < 1 or steps < 1 or depth < 1:
        return 0.0
    return 1.0 / (workers * float(steps) ** (depth - 1))


def pct_miss_bound(workers: int, steps: int, depth: int, clean_runs: int) -> float:
    """Upper bound on the chance that ``clean_runs`` covered runs all missed such a bug."""
    p = pct_run_probability(workers, steps, depth)
    if p <= 0.0 or clean_runs <= 0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return math.exp(clean_runs * math.log1p(-p))


def runs_for_confidence(workers: int, steps: int, depth: int, confidence: float = 0.95) -> int:
    """Covered clean runs needed before the miss bound falls to ``1 - confidence``."""
    p = pct_run_probability(workers, steps, depth)
    if p <= 0.0:
        return 0
    if p >= 1.0:
        return 1
    return math.ceil(math.log1p(-confidence) / math.log1p(-p))


@dataclass(frozen=True)
class Guarantee:
    """What a test's clean PCT runs say: n, k, d, m and the bound on a miss."""

    workers: int
    steps: int
    depth: int
    clean_runs: int
    runs: int

    @property
    def miss_bound(self) -> float:
        return pct_miss_bound(self.workers, self.steps, self.depth, self.clean_runs)

    @property
    def runs_for_95(self) -> int:
        return runs_for_confidence(self.workers, self.steps, self.depth)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "workers": self.workers,
            "steps": self.steps,
            "depth": self.depth,
            "clean_runs": self.clean_runs,
            "runs": self.runs,
            "run_probability": pct_run_probability(self.workers, self.steps, self.depth),
            "miss_bound": self.miss_bound,
            "runs_for_95": self.runs_for_95,
        }
