"""Scaling statistics: round records, medians with order-statistics intervals, the machine's
hold-ups, Karp-Flatt and the Universal Scalability Law.

Pure functions of :class:`RoundRecord` lists (no measuring, no pytest import), unit-tested on
synthetic numbers. The method is described in :mod:`pytest_concurrency.scaling.api`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from pytest_concurrency.scaling.records import WorkerSample

DEFAULT_BUDGET_SECONDS = 10.0
CI_COVERAGE = 0.90
CPU_BOUND_BUSY = 0.7
"""A worker alone that keeps this share of a core busy runs CPU-bound work."""
QUEUE_SHARE_LIMIT = 0.10
"""Share of a worker's time runnable but not running above which the machine held it back."""
STEAL_SHARE_LIMIT = 0.10
"""Share of CPU time taken by the hypervisor above which the machine fell short."""
USL_MIN_LEVELS = 6
MIN_CLEAN_ROUNDS = 5
"""Rounds the machine did not disturb needed to judge from clean rounds only."""


@dataclass(frozen=True)
class RoundRecord:
    """One (mode, worker count) in one round: the wall time and each worker's numbers."""

    mode: str
    workers: int
    round: int
    samples: tuple[WorkerSample, ...]
    steal: float | None = None

    @property
    def wall(self) -> float:
        """From the first worker's start to the last worker's end."""
        return max(s.end for s in self.samples) - min(s.start for s in self.samples)

    @property
    def cpu(self) -> tuple[float, ...]:
        return tuple(s.cpu for s in self.samples)

    @property
    def cores_used(self) -> float:
        """CPU time of all workers over the wall time: how many cores' worth they used."""
        return sum(self.cpu) / self.wall if self.wall > 0 else 0.0

    @property
    def busy(self) -> float:
        """The mean share of its own elapsed time that a worker spent on a CPU."""
        return statistics.fmean(s.cpu / s.elapsed if s.elapsed > 0 else 0.0 for s in self.samples)

    @property
    def queue(self) -> float | None:
        """The mean share of its elapsed time a worker spent waiting for a CPU, if seen."""
        shares = []
        for sample in self.samples:
            if sample.run_delay is None or sample.elapsed <= 0:
                return None
            shares.append(sample.run_delay / sample.elapsed)
        return statistics.fmean(shares)


@dataclass(frozen=True)
class MeasurementContext:
    """What was measured, on what: everything the verdict needs besides the records."""

    usable_cores: int
    gil_enabled: bool
    free_threaded: bool = False
    cores_description: str = ""
    unit: str = ""
    calls_per_worker: int = 1
    seconds_per_call: float | None = None
    budget: float = DEFAULT_BUDGET_SECONDS
    elapsed: float = 0.0
    seed: int = 0
    python: str = ""
    switch_interval: float | None = None


# --------------------------------------------------------------------------- statistics


class Interval(NamedTuple):
    """A median and its confidence interval, with the interval's coverage."""

    median: float
    low: float
    high: float
    coverage: float

    def straddles(self, threshold: float) -> bool:
        return self.low < threshold <= self.high

    def text(self) -> str:
        return f"x{self.median:.2f} [{self.low:.2f}, {self.high:.2f}]"


def binomial_half_cdf(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return float(sum(math.comb(n, i) for i in range(k + 1))) / 2.0**n


def median_interval(values: Sequence[float], coverage: float = CI_COVERAGE) -> Interval:
    """The median and the narrowest order-statistics interval with at least ``coverage``.

    With too few values to reach it, the interval is the full range and its true (lower)
    coverage is reported.
    """
    if not values:
        raise ValueError("median_interval() needs at least one value")
    ordered = sorted(values)
    n = len(ordered)
    j = 1
    while j + 1 <= n // 2 and 1 - 2 * binomial_half_cdf(j, n) >= coverage:
        j += 1
    achieved = 1 - 2 * binomial_half_cdf(j - 1, n)
    return Interval(statistics.median(ordered), ordered[j - 1], ordered[n - j], achieved)


def karp_flatt(speedup: float, workers: int) -> float | None:
    """The experimentally determined serial fraction e = (1/S - 1/N) / (1 - 1/N)."""
    if workers <= 1 or speedup <= 0:
        return None
    return (1 / speedup - 1 / workers) / (1 - 1 / workers)


@dataclass(frozen=True)
class LevelStats:
    """The statistics of one (mode, worker count) over all rounds."""

    mode: str
    workers: int
    rounds: int
    wall: float
    speedup: Interval
    cores_used: float
    busy: float
    queue: float | None
    steal: float | None
    disturbed_rounds: int = 0
    """Rounds in which the machine held the workers back (see :func:`disturbed`)."""
    machine_short: bool = False
    """Too few rounds were clean, so all were used: the machine held the workers back."""
    raw_speedup: Interval | None = None
    """The plain paired ratio N·W(1)/W(N), when ``speedup`` was decomposed (CPU-bound)."""
    cost_ratio: float | None = None
    """CPU time per call with N workers over CPU time per call with one (medians)."""

    @property
    def set_aside(self) -> int:
        """Rounds left out of the statistics because the machine held the workers back."""
        return 0 if self.machine_short else self.disturbed_rounds

    @property
    def efficiency(self) -> float:
        return self.speedup.median / self.workers

    @property
    def demand(self) -> float:
        """Share of its time a worker wanted a CPU: running on one, or queued for one."""
        return self.busy + (self.queue or 0.0)

    @property
    def serial_fraction(self) -> float | None:
        return karp_flatt(self.speedup.median, self.workers)


def _median_or_none(values: Iterable[float | None]) -> float | None:
    seen = list(values)
    if not seen or any(value is None for value in seen):
        return None
    return statistics.median(value for value in seen if value is not None)


def disturbed(record: RoundRecord, usable_cores: int) -> bool:
    """Did the machine hold this record's workers back (run queue or hypervisor steal)?

    Only at or below the usable cores: above them the workers queue behind each other.
    """
    if record.steal is not None and record.steal >= STEAL_SHARE_LIMIT:
        return True
    queue = record.queue
    return record.workers <= usable_cores and queue is not None and queue >= QUEUE_SHARE_LIMIT


def _cpu_per_worker(record: RoundRecord) -> float:
    return statistics.fmean(record.cpu)


def _level_from_pairs(
    mode: str,
    workers: int,
    pairs: Sequence[tuple[RoundRecord, RoundRecord]],
    disturbed_rounds: int,
    short: bool,
    decompose: bool = False,
) -> LevelStats:
    """The statistics of one level from (one-worker record, N-worker record) pairs.

    With ``decompose`` (CPU-bound units) the per-round speedup N·W(1)/W(N) is written as
    parallelism times cost: (cores in use at N / cores in use at 1) times (CPU per call at 1
    / CPU per call at N), an identity per round. The parallelism is kept per round; the cost ratio
    is taken as the ratio of the two levels' medians over all rounds. On a shared host the
    speed of a CPU changes from one moment to the next (other virtual machines on the same
    physical core), which moves CPU time per call by tens of percent between the two records
    of a pair; the medians keep what is systematic (workers slowing each other down) and
    drop what is not.
    """
    raw = [workers * base.wall / record.wall for base, record in pairs]
    ratios, raw_interval, cost = raw, None, None
    if decompose and workers > 1:
        alone = statistics.median(_cpu_per_worker(base) for base, _ in pairs)
        together = statistics.median(_cpu_per_worker(record) for _, record in pairs)
        if alone > 0 and together > 0 and all(base.cores_used > 0 for base, _ in pairs):
            cost = together / alone
            ratios = [record.cores_used / base.cores_used / cost for base, record in pairs]
            raw_interval = median_interval(raw)
    level = [record for _, record in pairs]
    return LevelStats(
        mode=mode,
        workers=workers,
        rounds=len(level),
        wall=statistics.median(r.wall for r in level),
        speedup=Interval(1.0, 1.0, 1.0, 1.0) if workers == 1 else median_interval(ratios),
        cores_used=statistics.median(r.cores_used for r in level),
        busy=statistics.median(r.busy for r in level),
        queue=_median_or_none(r.queue for r in level),
        steal=_median_or_none(r.steal for r in level),
        disturbed_rounds=disturbed_rounds,
        machine_short=short,
        raw_speedup=raw_interval,
        cost_ratio=cost,
    )


def _demand(record: RoundRecord) -> float:
    return record.busy + (record.queue or 0.0)


def level_stats(records: Sequence[RoundRecord], mode: str, usable_cores: int) -> list[LevelStats]:
    """Per-level statistics of one mode, speedups paired with the same round's one worker.

    Pairs in which either record was :func:`disturbed` are set aside when at least
    :data:`MIN_CLEAN_ROUNDS` clean pairs remain; otherwise all pairs are used and the level
    is marked ``machine_short``. For CPU-bound units the speedup is decomposed (see
    :func:`_level_from_pairs`). Nothing is corrected for: taking each worker's run-queue
    wait out of the times is exact for independent workers but, on a loaded machine, makes
    workers that take turns at a lock look parallel (a woken waiter queues for a CPU while the
    holder runs), so a short machine is reported, not modelled.
    """
    mine = [record for record in records if record.mode == mode and record.wall > 0]
    baseline = {record.round: record for record in mine if record.workers == 1}
    decompose = bool(baseline) and (
        statistics.median(_demand(record) for record in baseline.values()) >= CPU_BOUND_BUSY
    )
    result = []
    for workers in sorted({record.workers for record in mine}):
        pairs = [
            (baseline[r.round], r) for r in mine if r.workers == workers and r.round in baseline
        ]
        if not pairs:
            continue
        clean = [
            (base, record)
            for base, record in pairs
            if not disturbed(base, usable_cores) and not disturbed(record, usable_cores)
        ]
        disturbed_rounds = len(pairs) - len(clean)
        short = len(clean) < min(MIN_CLEAN_ROUNDS, len(pairs))
        used = pairs if short else clean
        result.append(_level_from_pairs(mode, workers, used, disturbed_rounds, short, decompose))
    return result


@dataclass(frozen=True)
class UslFit:
    """Universal Scalability Law: C(N) = N / (1 + sigma (N-1) + kappa N (N-1))."""

    sigma: float
    kappa: float
    r_squared: float

    def capacity(self, workers: float) -> float:
        return workers / (1 + self.sigma * (workers - 1) + self.kappa * workers * (workers - 1))

    @property
    def peak_workers(self) -> float | None:
        """The worker count of the highest capacity, when coherency delay makes one."""
        if self.kappa <= 0 or self.sigma >= 1:
            return None
        return math.sqrt((1 - self.sigma) / self.kappa)


def _least_squares(
    rows: Sequence[tuple[float, float, float]], use: tuple[bool, bool]
) -> tuple[float, float]:
    """Least squares through the origin of y on (x1, x2), each regressor switchable."""
    s11 = sum(x1 * x1 for x1, _, _ in rows)
    s22 = sum(x2 * x2 for _, x2, _ in rows)
    s12 = sum(x1 * x2 for x1, x2, _ in rows)
    s1y = sum(x1 * y for x1, _, y in rows)
    s2y = sum(x2 * y for _, x2, y in rows)
    if use == (True, True):
        det = s11 * s22 - s12 * s12
        if det <= 0:
            return (0.0, 0.0)
        return ((s1y * s22 - s2y * s12) / det, (s2y * s11 - s1y * s12) / det)
    if use == (True, False):
        return (s1y / s11 if s11 else 0.0, 0.0)
    return (0.0, s2y / s22 if s22 else 0.0)


def fit_usl(points: Sequence[tuple[int, float]]) -> UslFit | None:
    """Fit sigma, kappa >= 0 to (workers, capacity) points; None with fewer than six levels.

    Linearized: N/C - 1 = sigma (N-1) + kappa N (N-1), fitted by least squares with the
    constraint sigma, kappa >= 0 (each boundary tried); R² is computed on C itself.
    """
    usable = [(n, c) for n, c in points if c > 0]
    if len({n for n, _ in usable}) < USL_MIN_LEVELS:
        return None
    rows = [(n - 1.0, n * (n - 1.0), n / c - 1.0) for n, c in usable]
    mean_c = statistics.fmean(c for _, c in usable)
    total = sum((c - mean_c) ** 2 for _, c in usable)
    best: UslFit | None = None
    best_error = math.inf
    for use in ((True, True), (True, False), (False, True)):
        sigma, kappa = _least_squares(rows, use)
        if sigma < 0 or kappa < 0:
            continue
        fit = UslFit(sigma, kappa, 0.0)
        error = sum((c - fit.capacity(n)) ** 2 for n, c in usable)
        if error < best_error:
            best_error = error
            best = replace(fit, r_squared=1 - error / total if total > 0 else 1.0)
    return best if best is not None else UslFit(0.0, 0.0, 0.0)
