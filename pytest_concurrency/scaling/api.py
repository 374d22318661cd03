"""Does a unit of work scale with cores, and if not, why: the plan, the statistics, the verdict.

Method (a replica design). Every worker calls the same unit of work the same number of times
per round; the workers of a round start together. With W(N) the wall time of a round with N
workers, throughput is N·calls/W(N), so the capacity is C(N) = N·W(1)/W(N) and the efficiency
E(N) = C(N)/N. Worker levels go up to the usable cores for processes and to twice the usable
cores for threads (past the cores only waiting work can still gain: that is how I/O shows).

Rounds are interleaved: each round visits every (mode, level) once in a seeded shuffled order,
so slow drifts of a shared machine hit all levels alike, and the speedup of a round is
computed against the one-worker time *of the same round* (a paired ratio). The speedup at a
level is the median of its per-round ratios, with a distribution-free confidence interval from
order statistics: for n rounds, ``[x(j), x(n+1-j)]`` covers the median with probability
``1 - 2·P(Binomial(n, 1/2) <= j-1)``, and we take the narrowest such pair that reaches 90%.
We chose order statistics over a bootstrap because with the 5 to 25 rounds a 10-second budget
allows, a bootstrap of the median is lumpy and too narrow, while the order-statistics interval
is exact under the one assumption that rounds are independent, needs no random generator, and
ignores a few disturbed rounds. (The seed only shuffles the order of levels within rounds.)

Beside wall time, each worker measures its own CPU time (``time.thread_time`` in threads,
``time.process_time`` in the child for processes) and, on Linux, its run-queue delay (time
runnable but not running, from ``/proc/thread-self/schedstat``), and each round records the
hypervisor's steal share from ``/proc/stat``. A record whose workers waited for a CPU (at or
below the usable cores) or lost CPU to the hypervisor is *disturbed*; its rounds are set
aside when enough clean rounds remain, and otherwise the machine is reported as short.

Two further things make the numbers hold on a shared virtual machine, where a "core" may be a
hyperthread and its speed changes from one moment to the next:

* For CPU-bound units the per-round speedup is written as an identity, parallelism times
  cost: (cores in use at N / at 1) x (CPU per call at 1 / at N); the parallelism stays per
  round, the cost ratio is taken from the medians over all rounds. That drops the random
  speed changes between the two records of a pair and keeps what is systematic.
* Every round also runs a *reference unit* (hashing a 256 KiB buffer in threads: perfectly
  parallel CPU work, see :func:`~pytest_concurrency.scaling.child.reference_work`) at 1 and at
  each counted worker number up to the usable cores. What the machine delivers to it is the
  bar for CPU-bound modes (75% of it), and a machine delivering under 70% of N to it did not
  supply the cores.

The verdicts (:mod:`pytest_concurrency.scaling.verdict`):

===================== ==========================================================================
``scales``            every measured mode reaches 75% of what the machine delivers at the cores
``gil-bound``         threads stay at about one core of CPU and do not scale, processes scale
``io-bound``          threads scale past the core count while one worker alone uses little CPU
``contended``         workers gain a little, lose, wait for each other, or each call costs more
``serial``            no mode gains at all: the work runs one worker at a time
``environment-limited`` the machine did not supply the cores (CPU waits, steal, weak reference)
``inconclusive``      the speedup interval straddles the threshold
===================== ==========================================================================

The Karp-Flatt serial fraction e(N) = (1/C - 1/N)/(1 - 1/N) is given at every level; a
Universal Scalability Law fit C(N) = N/(1 + sigma (N-1) + kappa N (N-1)) only with six or
more levels.

Layout: the statistics (:mod:`~pytest_concurrency.scaling.stats`) and the verdict
(:mod:`~pytest_concurrency.scaling.verdict`) are pure functions of :class:`RoundRecord` lists,
tested on synthetic numbers; the measuring is in :mod:`~pytest_concurrency.scaling.measure`
(and :mod:`~pytest_concurrency.scaling.child` in the worker processes); this module holds the
public API: :func:`measure_scaling`, :class:`ScalingReport`, :func:`check_expectation` and
:func:`format_scaling_table`. Pure module: no pytest import.
"""

from __future__ import annotations

import functools
import inspect
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_concurrency.engine.cores import core_budget, free_threaded_build, gil_enabled
from pytest_concurrency.errors import ScalingMeasurementError, ScalingUsageError, ScalingWorkError
from pytest_concurrency.scaling.child import reference_work
from pytest_concurrency.scaling.measure import (
    ProcessPool,
    Unit,
    WaitSampler,
    read_cpu_counters,
    run_thread_round,
    steal_share,
)
from pytest_concurrency.scaling.records import WaitSite
from pytest_concurrency.scaling.stats import (
    CI_COVERAGE,
    DEFAULT_BUDGET_SECONDS,
    Interval,
    LevelStats,
    MeasurementContext,
    RoundRecord,
    UslFit,
    fit_usl,
    karp_flatt,
    level_stats,
    median_interval,
)
from pytest_concurrency.scaling.verdict import (
    CONTENDED,
    MACHINE,
    MODES,
    PROCESSES,
    SCALES_EFFICIENCY,
    SERIAL,
    THREADS,
    VERDICTS,
    decide,
    describe_level,
    judge_mode,
    set_aside_reason,
)

__all__ = [
    "MODES",
    "PROCESSES",
    "THREADS",
    "VERDICTS",
    "Interval",
    "LevelStats",
    "MeasurementContext",
    "RoundRecord",
    "ScalingMeasurementError",
    "ScalingReport",
    "ScalingUsageError",
    "ScalingWorkError",
    "UslFit",
    "analyze",
    "check_expectation",
    "fit_usl",
    "format_scaling_table",
    "karp_flatt",
    "measure_scaling",
    "median_interval",
]

# --------------------------------------------------------------------------- limits

MAX_BUDGET_SECONDS = 3600.0
MAX_WORKERS = 512
MAX_DEFAULT_LEVELS = 8
MIN_ROUNDS = 5
MAX_ROUNDS = 25
TARGET_ROUNDS = 12
"""Rounds the batch size is planned for, assuming the worst case (fully serial work)."""
MIN_EXPLICIT_ROUNDS = 3
MAX_EXPLICIT_ROUNDS = 1000
OVER_BUDGET_WARNING = 1.5
"""A measurement that took this many budgets says so in its reasons."""
MAX_OVERRUN = 3.0
"""Refuse a measurement whose smallest plan would take more than this many budgets."""
MIN_BATCH_SECONDS = 0.02
"""A worker's batch of calls lasts at least this long, so start skew stays a small error."""
CALIBRATION_SHARE = 0.02
"""Share of the budget spent timing the unit before planning."""
REFERENCE_CALIBRATION_SECONDS = 0.03
REFERENCE_UNIT = Unit(reference_work, (), {})
ROUND_DEADLINE_FLOOR = 10.0
ROUND_DEADLINE_FACTOR = 20.0
"""A round may take this many times its worst-case planned time (at least the floor)."""

# --------------------------------------------------------------------------- user-facing text

BAD_MODE = "scaling: unknown mode {mode!r}; use one or both of {choices}."
ASYNCIO_MODE = (
    "scaling: mode 'asyncio' runs every task on one thread, so it cannot use more cores; "
    "measure modes=('threads', 'processes')."
)
NO_MODES = "scaling: modes= is empty; use one or both of {choices}."
BAD_WORKERS = (
    "scaling: workers={value!r} is not usable; give the largest worker count as an integer "
    "from 2 to {limit}, or a list of worker counts from 1 to {limit} including one above 1."
)
BAD_ROUNDS = (
    "scaling: rounds={value!r} is not usable; give an integer from {low} to {high}, "
    "or leave it out to fit the rounds to the budget."
)
BAD_BUDGET = (
    "scaling: budget={value!r} is not usable; give seconds, more than 0 and at most {high}."
)
BAD_SEED = "scaling: seed={value!r} is not an integer."
NOT_CALLABLE = "scaling: the unit of work {value!r} is not callable; pass a function."
COROUTINE_UNIT = (
    "scaling: {name} is a coroutine function; scaling measures plain functions: pass "
    "a function that runs it, such as lambda: asyncio.run({name}()) (threads mode only)."
)
UNPICKLABLE_UNIT = (
    "scaling: {name} and its arguments cannot be sent to worker processes ({error}). "
    "In processes mode the unit of work is pickled: define the function at module level "
    "(not a lambda, a nested function or a local class) and pass picklable arguments, "
    "or measure threads only with modes=('threads',)."
)
UNKNOWN_EXPECT = "scaling: expect={value!r} is not a verdict; use one of {choices}."
BAD_MIN_EFFICIENCY = "scaling: min_efficiency={value!r} is not a number between 0 and 1."
BUDGET_TOO_SMALL = (
    "scaling: one call of {name} takes {call:.2g} s, so {rounds} rounds over the worker counts "
    "{levels} need about {needed:.0f} s, far over budget={budget:g} s; pass a larger budget= "
    "(or fewer workers=, or rounds=3), or measure a smaller unit of work."
)
OVER_BUDGET = (
    "the measurement took {elapsed:.1f} s, over its budget of {budget:g} s: one call of the "
    "unit takes {call:.2g} s"
)
NOT_MEASURED = "scaling: no measurement with {workers} {mode}; measured: {levels}."
EXPECT_FAILED = "scaling: expected {expected}, got {verdict}."
EFFICIENCY_FAILED = (
    "scaling: efficiency {efficiency:.0%} with {workers} {mode} (interval {low:.0%} to "
    "{high:.0%}) is below min_efficiency={minimum:.0%}."
)
NO_JUDGED_LEVEL = "scaling: no efficiency at the usable cores to compare with min_efficiency."

# --------------------------------------------------------------------------- the report


@dataclass
class ScalingReport:
    """The result of a scaling measurement: the verdict, its reasons, the table, the numbers."""

    verdict: str
    reasons: list[str]
    context: MeasurementContext
    levels: dict[str, list[LevelStats]]
    records: list[RoundRecord]
    usl: dict[str, UslFit] = field(default_factory=dict)
    wait_site: WaitSite | None = None
    machine: list[LevelStats] = field(default_factory=list)
    machine_records: list[RoundRecord] = field(default_factory=list)
    judged_workers: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def level(self, mode: str, workers: int) -> LevelStats:
        for level in self.levels.get(mode, []):
            if level.workers == workers:
                return level
        measured = ", ".join(
            f"{m} {[level.workers for level in levels]}" for m, levels in self.levels.items()
        )
        raise ScalingUsageError(NOT_MEASURED.format(workers=workers, mode=mode, levels=measured))

    def speedup(self, mode: str, n: int) -> float:
        """The median capacity C(n) = throughput(n) / throughput(1)."""
        return self.level(mode, n).speedup.median

    def efficiency(self, mode: str, n: int) -> float:
        """C(n) / n."""
        return self.level(mode, n).efficiency

    def interval(self, mode: str, n: int) -> Interval:
        return self.level(mode, n).speedup

    def add_warning(self, text: str) -> None:
        """Note a reason to doubt the numbers; it is shown with the reasons."""
        self.warnings.append(text)
        self.reasons.append(f"warning: {text}")

    @property
    def gil_enabled(self) -> bool:
        return self.context.gil_enabled

    @property
    def usable_cores(self) -> int:
        return self.context.usable_cores

    def summary(self) -> str:
        """A table of every level, then the verdict and its reasons."""
        return "\n".join(summary_lines(self))

    def to_json(self) -> dict[str, Any]:
        """Plain data for the JSON report (the caller adds ``nodeid``)."""
        return report_json(self)


def analyze(
    records: Sequence[RoundRecord],
    context: MeasurementContext,
    wait_site: WaitSite | None = None,
) -> ScalingReport:
    """Statistics and verdict from round records (pure: no measuring happens here)."""
    modes = [mode for mode in MODES if any(record.mode == mode for record in records)]
    levels = {mode: level_stats(records, mode, context.usable_cores) for mode in modes}
    machine = level_stats(records, MACHINE, context.usable_cores)
    judgements = {mode: judge_mode(levels[mode], context.usable_cores, machine) for mode in modes}
    verdict = decide(judgements, context.usable_cores, context.gil_enabled, wait_site)
    reasons = list(verdict.reasons)
    reasons += [describe_level(j.judged) for j in judgements.values() if j.judged is not None]
    reference = next((j.reference for j in judgements.values() if j.reference), None)
    if reference is not None:
        reasons.append(_reference_reason(reference))
    reasons += [
        set_aside_reason(level)
        for mode in modes
        for level in levels[mode]
        if level.set_aside and level.workers in (1, judgements[mode].judged_workers)
    ]

    usl = {}
    for mode in modes:
        fit = fit_usl([(level.workers, level.speedup.median) for level in levels[mode]])
        if fit is not None:
            usl[mode] = fit
            reasons.append(_usl_reason(mode, fit))
    if not context.gil_enabled:
        reasons.append(
            "GIL disabled (free-threaded build): threads can run Python code in parallel"
        )
    return ScalingReport(
        verdict=verdict.word,
        reasons=reasons,
        context=context,
        levels=levels,
        records=[record for record in records if record.mode != MACHINE],
        machine=machine,
        machine_records=[record for record in records if record.mode == MACHINE],
        usl=usl,
        wait_site=wait_site,
        judged_workers={m: j.judged.workers for m, j in judgements.items() if j.judged},
    )


def _reference_reason(reference: LevelStats) -> str:
    return (
        f"reference: the machine delivered {reference.speedup.text()} with {reference.workers} "
        "workers to perfectly parallel CPU work (hashing in threads); CPU-bound modes are "
        f"judged against {SCALES_EFFICIENCY:.0%} of that"
    )


def _usl_reason(mode: str, fit: UslFit) -> str:
    peak = fit.peak_workers
    where = f", peak near {peak:.1f} workers" if peak is not None else ""
    return (
        f"{mode}: Universal Scalability Law fit: contention sigma={fit.sigma:.3f}, "
        f"coherency kappa={fit.kappa:.4f} (R²={fit.r_squared:.2f}){where}"
    )


TABLE_HEADER = (
    "mode",
    "workers",
    "speedup",
    "interval",
    "efficiency",
    "cores used",
    "busy",
    "cpu wait",
    "cpu/call",
    "serial fr.",
)


def _level_row(level: LevelStats) -> tuple[str, ...]:
    fraction = level.serial_fraction
    interval = "" if level.workers == 1 else f"[{level.speedup.low:.2f}, {level.speedup.high:.2f}]"
    return (
        level.mode,
        str(level.workers),
        f"x{level.speedup.median:.2f}",
        interval,
        f"{level.efficiency:.0%}",
        f"{level.cores_used:.2f}",
        f"{level.busy:.0%}",
        "" if level.queue is None else f"{level.queue:.0%}",
        "" if level.cost_ratio is None else f"x{level.cost_ratio:.2f}",
        "" if fraction is None else f"{fraction:.2f}",
    )


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def summary_lines(report: ScalingReport) -> list[str]:
    context = report.context
    rows: list[Sequence[str]] = [TABLE_HEADER]
    for levels in [*report.levels.values(), report.machine]:
        rows.extend(_level_row(level) for level in levels)
    gil = "GIL enabled" if context.gil_enabled else "GIL disabled"
    lines = [f"scaling of {context.unit or 'the unit of work'}: {report.verdict}"]
    lines += _aligned(rows)
    lines.append("reasons:")
    lines += [f"  - {reason}" for reason in report.reasons]
    rounds = max((level.rounds for levels in report.levels.values() for level in levels), default=0)
    lines.append(
        f"{context.usable_cores} usable cores ({context.cores_description}); {gil}; {rounds} "
        f"rounds of {context.calls_per_worker} calls per worker; {context.elapsed:.1f} s; "
        f"interval: {CI_COVERAGE:.0%} order-statistics interval of the median; CPU-bound "
        "speedups are cores in use x CPU per call (see the docs)"
    )
    return lines


def _level_json(level: LevelStats, records: Sequence[RoundRecord]) -> dict[str, Any]:
    mine = sorted(
        (r for r in records if r.mode == level.mode and r.workers == level.workers),
        key=lambda r: r.round,
    )
    delays = [[s.run_delay for s in r.samples] for r in mine]
    return {
        "mode": level.mode,
        "workers": level.workers,
        "rounds": level.rounds,
        "wall_s": [r.wall for r in mine],
        "cpu_s": [list(r.cpu) for r in mine],
        "run_delay_s": None if any(None in d for d in delays) else delays,
        "steal": [r.steal for r in mine],
        "speedup": level.speedup._asdict(),
        "raw_speedup": None if level.raw_speedup is None else level.raw_speedup._asdict(),
        "cpu_per_call_ratio": level.cost_ratio,
        "efficiency": level.efficiency,
        "cores_used": level.cores_used,
        "busy": level.busy,
        "cpu_wait": level.queue,
        "serial_fraction": level.serial_fraction,
        "disturbed_rounds": level.disturbed_rounds,
        "set_aside": level.set_aside,
        "machine_short": level.machine_short,
    }


def report_json(report: ScalingReport) -> dict[str, Any]:
    context = report.context
    usl = {
        mode: {
            "sigma": fit.sigma,
            "kappa": fit.kappa,
            "r_squared": fit.r_squared,
            "peak_workers": fit.peak_workers,
        }
        for mode, fit in report.usl.items()
    }
    site = report.wait_site
    return {
        "verdict": report.verdict,
        "reasons": list(report.reasons),
        "warnings": list(report.warnings),
        "unit": context.unit,
        "gil_enabled": context.gil_enabled,
        "free_threaded": context.free_threaded,
        "python": context.python,
        "usable_cores": context.usable_cores,
        "cores": context.cores_description,
        "calls_per_worker": context.calls_per_worker,
        "seconds_per_call": context.seconds_per_call,
        "budget_s": context.budget,
        "elapsed_s": context.elapsed,
        "seed": context.seed,
        "interval_coverage_target": CI_COVERAGE,
        "judged_workers": dict(report.judged_workers),
        "levels": [
            _level_json(level, report.records)
            for levels in report.levels.values()
            for level in levels
        ],
        "machine_reference": [
            _level_json(level, report.machine_records) for level in report.machine
        ],
        "usl": usl or None,
        "wait_site": None
        if site is None
        else {
            "location": site.location,
            "source": site.source,
            "share": site.share,
            "sightings": site.sightings,
        },
    }


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class MeasurementPlan:
    """Which levels per mode, how many calls per worker per round, how many rounds."""

    levels: dict[str, tuple[int, ...]]
    calls: int = 1
    reference_calls: int = 1
    min_rounds: int = MIN_ROUNDS
    max_rounds: int = MAX_ROUNDS

    @property
    def weight(self) -> int:
        """Batches of work per round if the work were fully serial (the worst case)."""
        return sum(sum(levels) for levels in self.levels.values())

    def round_order(self, rng: random.Random) -> list[tuple[str, int]]:
        """Every (mode, level) once, in a seeded shuffled order."""
        order = [(mode, n) for mode, levels in self.levels.items() for n in levels]
        rng.shuffle(order)
        return order


def default_levels(limit: int) -> tuple[int, ...]:
    """1..limit when small; else a spread of at most MAX_DEFAULT_LEVELS counts up to limit."""
    if limit <= MAX_DEFAULT_LEVELS:
        return tuple(range(1, limit + 1))
    picks = {1, limit}
    for i in range(1, MAX_DEFAULT_LEVELS - 1):
        picks.add(max(2, round(limit ** (i / (MAX_DEFAULT_LEVELS - 1)))))
    return tuple(sorted(picks))


def validate_modes(modes: str | Iterable[str]) -> tuple[str, ...]:
    chosen = (modes,) if isinstance(modes, str) else tuple(modes)
    choices = ", ".join(repr(m) for m in MODES)
    if not chosen:
        raise ScalingUsageError(NO_MODES.format(choices=choices))
    for mode in chosen:
        if mode == "asyncio":
            raise ScalingUsageError(ASYNCIO_MODE)
        if mode not in MODES:
            raise ScalingUsageError(BAD_MODE.format(mode=mode, choices=choices))
    return tuple(dict.fromkeys(chosen))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def plan_levels(
    usable_cores: int, workers: int | Sequence[int] | None, modes: Sequence[str]
) -> dict[str, tuple[int, ...]]:
    """Worker counts per mode: by default threads to twice the cores, processes to the cores."""
    error = ScalingUsageError(BAD_WORKERS.format(value=workers, limit=MAX_WORKERS))
    if workers is None:
        limits = {THREADS: max(2, 2 * usable_cores), PROCESSES: max(2, usable_cores)}
        return {mode: default_levels(limits[mode]) for mode in modes}
    if _is_count(workers):
        assert isinstance(workers, int)
        if not 2 <= workers <= MAX_WORKERS:
            raise error
        return {mode: default_levels(workers) for mode in modes}
    value: object = workers
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise error
    counts = list(value)
    if not counts or not all(_is_count(n) and 1 <= n <= MAX_WORKERS for n in counts):
        raise error
    if max(counts) < 2:
        raise error
    levels = tuple(sorted({1, *counts}))
    return {mode: levels for mode in modes}


def validate_rounds(rounds: int | None) -> int | None:
    if rounds is None:
        return None
    if not _is_count(rounds) or not MIN_EXPLICIT_ROUNDS <= rounds <= MAX_EXPLICIT_ROUNDS:
        raise ScalingUsageError(
            BAD_ROUNDS.format(value=rounds, low=MIN_EXPLICIT_ROUNDS, high=MAX_EXPLICIT_ROUNDS)
        )
    return rounds


def validate_budget(budget: float | None) -> float:
    if budget is None:
        return DEFAULT_BUDGET_SECONDS
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int, float))
        or not 0 < budget <= MAX_BUDGET_SECONDS
    ):
        raise ScalingUsageError(BAD_BUDGET.format(value=budget, high=MAX_BUDGET_SECONDS))
    return float(budget)


def unit_name(fn: Callable[..., Any]) -> str:
    """A readable name for the unit of work (a partial is named by its function)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def validate_unit(unit: Unit, modes: Sequence[str]) -> None:
    if not callable(unit.fn):
        raise ScalingUsageError(NOT_CALLABLE.format(value=unit.fn))
    name = unit_name(unit.fn)
    if inspect.iscoroutinefunction(unit.fn):
        raise ScalingUsageError(COROUTINE_UNIT.format(name=name))
    if PROCESSES in modes:
        try:
            unit.payload()
        except Exception as exc:
            raise ScalingUsageError(
                UNPICKLABLE_UNIT.format(name=name, error=f"{type(exc).__name__}: {exc}")
            ) from exc


# --------------------------------------------------------------------------- measuring


def calibrate(unit: Unit, seconds: float) -> float:
    """Call the unit in this thread and return the time of one call.

    The first call is a warm-up, and any exception from it propagates unchanged, with the
    caller's own traceback.
    """
    start = time.perf_counter()
    unit.fn(*unit.args, **unit.kwargs)
    first = time.perf_counter() - start
    if first >= seconds:
        return first
    calls = 0
    start = time.perf_counter()
    while True:
        unit.fn(*unit.args, **unit.kwargs)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls


def reference_levels(levels: Mapping[str, Sequence[int]], usable_cores: int) -> tuple[int, ...]:
    """Worker counts for the machine's reference unit: 1 and every measured count from 2 up
    to the usable cores (the counts the verdict is judged at)."""
    counts = {n for measured in levels.values() for n in measured if 1 < n <= usable_cores}
    return (1, *sorted(counts)) if counts else ()


def plan_calls(
    levels: Mapping[str, Sequence[int]],
    seconds_per_call: float,
    remaining: float,
    rounds: int | None,
    seconds_per_reference_call: float = 1e-3,
) -> MeasurementPlan:
    """Size a worker's batch so the planned rounds fit the remaining budget, worst case."""
    plan = MeasurementPlan(levels={mode: tuple(counts) for mode, counts in levels.items()})
    target = rounds or TARGET_ROUNDS
    spare = max(levels.get(THREADS, (0,)))
    batch = max(MIN_BATCH_SECONDS, remaining / (target * plan.weight + spare))
    calls = max(1, round(batch / max(seconds_per_call, 1e-9)))
    reference_calls = max(1, round(batch / max(seconds_per_reference_call, 1e-9)))
    plan = replace(plan, calls=calls, reference_calls=reference_calls)
    if rounds is not None:
        return replace(plan, min_rounds=rounds, max_rounds=rounds)
    return plan


def check_budget(plan: MeasurementPlan, seconds_per_call: float, budget: float, name: str) -> None:
    """Refuse a unit so slow that even the smallest plan would take several budgets."""
    batch = plan.calls * seconds_per_call
    needed = plan.min_rounds * plan.weight * batch
    if needed > MAX_OVERRUN * budget:
        levels = "; ".join(f"{mode} {list(counts)}" for mode, counts in plan.levels.items())
        raise ScalingUsageError(
            BUDGET_TOO_SMALL.format(
                name=name,
                call=seconds_per_call,
                rounds=plan.min_rounds,
                levels=levels,
                needed=needed,
                budget=budget,
            )
        )


class _Measurement:
    """The measuring loop: rounds over every (mode, level), within the budget and deadlines."""

    def __init__(
        self, unit: Unit, plan: MeasurementPlan, batch_seconds: float, pool: ProcessPool | None
    ) -> None:
        self.unit = unit
        self.plan = plan
        self.batch_seconds = batch_seconds
        self.pool = pool
        self.records: list[RoundRecord] = []

    def deadline(self, workers: int) -> float:
        return max(ROUND_DEADLINE_FLOOR, ROUND_DEADLINE_FACTOR * workers * self.batch_seconds)

    def one(self, mode: str, workers: int, round_index: int) -> RoundRecord:
        before = read_cpu_counters()
        if mode == THREADS:
            samples = run_thread_round(self.unit, workers, self.plan.calls, self.deadline(workers))
        elif mode == MACHINE:
            samples = run_thread_round(
                REFERENCE_UNIT, workers, self.plan.reference_calls, self.deadline(workers)
            )
        else:
            assert self.pool is not None
            samples = self.pool.run_round(workers, self.plan.calls, self.deadline(workers))
        steal = steal_share(before, read_cpu_counters())
        return RoundRecord(mode, workers, round_index, tuple(samples), steal)

    def run(self, rng: random.Random, ends_at: float) -> None:
        last = 0.0
        for round_index in range(self.plan.max_rounds):
            now = time.perf_counter()
            if round_index >= self.plan.min_rounds and now + last > ends_at:
                return
            for mode, workers in self.plan.round_order(rng):
                self.records.append(self.one(mode, workers, round_index))
            last = time.perf_counter() - now

    def look_for_wait_site(self) -> WaitSite | None:
        """One extra thread round at the most workers, looking at where the threads wait."""
        workers = max(self.plan.levels[THREADS])
        sampler = WaitSampler()
        run_thread_round(self.unit, workers, self.plan.calls, self.deadline(workers), sampler)
        return sampler.busiest()


def measure_scaling(
    fn: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    workers: int | Sequence[int] | None = None,
    modes: str | Sequence[str] = MODES,
    rounds: int | None = None,
    budget: float | None = None,
    seed: int = 0,
) -> ScalingReport:
    """Measure how ``fn(*args, **kwargs)`` scales with workers, in threads and in processes.

    ``workers``: the largest worker count (levels are spread up to it) or a list of counts;
    by default up to twice the usable cores for threads and up to the cores for processes.
    ``rounds``: a fixed number of rounds; by default as many as fit ``budget`` seconds
    (10 by default), at least 5. ``seed`` shuffles the order of levels within rounds.
    Raises :class:`ScalingUsageError` for arguments that cannot work, the unit's own
    exception if its first (warm-up) call raises, :class:`ScalingWorkError` if it raises
    in a worker, and :class:`ScalingMeasurementError` if a round overruns its deadline.
    """
    started = time.perf_counter()
    chosen_modes = validate_modes(modes)
    budget_s = validate_budget(budget)
    fixed_rounds = validate_rounds(rounds)
    if not _is_count(seed):
        raise ScalingUsageError(BAD_SEED.format(value=seed))
    unit = Unit(fn, tuple(args), dict(kwargs or {}))
    validate_unit(unit, chosen_modes)
    cores = core_budget()
    levels = plan_levels(cores.usable, workers, chosen_modes)
    seconds_per_call = calibrate(unit, CALIBRATION_SHARE * budget_s)
    seconds_per_reference_call = calibrate(REFERENCE_UNIT, REFERENCE_CALIBRATION_SECONDS)
    reference = reference_levels(levels, cores.usable)
    with ExitStack() as stack:
        pool = None
        if PROCESSES in levels:
            pool = stack.enter_context(ProcessPool(max(levels[PROCESSES]), unit))
        remaining = budget_s - (time.perf_counter() - started)
        measured = {**levels, MACHINE: reference} if reference else dict(levels)
        plan = plan_calls(
            measured, seconds_per_call, remaining, fixed_rounds, seconds_per_reference_call
        )
        check_budget(plan, seconds_per_call, budget_s, unit_name(fn))
        measurement = _Measurement(unit, plan, plan.calls * seconds_per_call, pool)
        spare = max(levels.get(THREADS, (0,))) * measurement.batch_seconds
        measurement.run(random.Random(seed), started + budget_s - spare)
    context = MeasurementContext(
        usable_cores=cores.usable,
        gil_enabled=gil_enabled(),
        free_threaded=free_threaded_build(),
        cores_description=cores.describe(),
        unit=unit_name(fn),
        calls_per_worker=plan.calls,
        seconds_per_call=seconds_per_call,
        budget=budget_s,
        seed=seed,
        python=sys.version.split()[0],
        switch_interval=sys.getswitchinterval(),
    )
    report = analyze(measurement.records, context)
    if report.verdict in (CONTENDED, SERIAL) and THREADS in levels:
        report = analyze(measurement.records, context, measurement.look_for_wait_site())
    report.context = replace(context, elapsed=time.perf_counter() - started)
    if report.context.elapsed > OVER_BUDGET_WARNING * budget_s:
        report.add_warning(
            OVER_BUDGET.format(
                elapsed=report.context.elapsed, budget=budget_s, call=seconds_per_call
            )
        )
    return report


# --------------------------------------------------------------------------- gates and tables


def _expected_words(expect: str | Iterable[str]) -> tuple[str, ...]:
    words = (expect,) if isinstance(expect, str) else tuple(expect)
    for word in words:
        if word not in VERDICTS:
            raise ScalingUsageError(UNKNOWN_EXPECT.format(value=word, choices=", ".join(VERDICTS)))
    if not words:
        raise ScalingUsageError(UNKNOWN_EXPECT.format(value=expect, choices=", ".join(VERDICTS)))
    return words


def validate_expectation(expect: str | Iterable[str] | None, min_efficiency: float | None) -> None:
    """Raise :class:`ScalingUsageError` for an unknown verdict word or a bad efficiency."""
    if expect is not None:
        _expected_words(expect)
    if min_efficiency is not None and (
        isinstance(min_efficiency, bool)
        or not isinstance(min_efficiency, (int, float))
        or not 0 < min_efficiency <= 1
    ):
        raise ScalingUsageError(BAD_MIN_EFFICIENCY.format(value=min_efficiency))


def check_expectation(
    report: ScalingReport,
    expect: str | Iterable[str] | None = None,
    min_efficiency: float | None = None,
) -> str | None:
    """The failure text (with the table) when the report misses the expectation, else None.

    ``expect`` is a verdict word or several acceptable words. ``min_efficiency`` is checked
    for every measured mode at its judged level (the most workers not above the usable cores),
    against the median efficiency; pass ``modes=`` to the measurement to gate one mode only.
    """
    validate_expectation(expect, min_efficiency)
    failures = []
    if expect is not None:
        words = _expected_words(expect)
        if report.verdict not in words:
            failures.append(
                EXPECT_FAILED.format(expected=" or ".join(words), verdict=report.verdict)
            )
    if min_efficiency is not None:
        if not report.judged_workers:
            failures.append(NO_JUDGED_LEVEL)
        for mode, workers in report.judged_workers.items():
            level = report.level(mode, workers)
            if level.efficiency < min_efficiency:
                failures.append(
                    EFFICIENCY_FAILED.format(
                        efficiency=level.efficiency,
                        workers=workers,
                        mode=mode,
                        low=level.speedup.low / workers,
                        high=level.speedup.high / workers,
                        minimum=min_efficiency,
                    )
                )
    if not failures:
        return None
    return "\n".join([*failures, "", report.summary()])


TABLE_TITLE = "scaling"
ENTRY_HEADER = ("test", "verdict", "threads", "processes", "cores", "GIL")


def _mode_cell(entry: Mapping[str, Any], mode: str) -> str:
    workers = entry.get("judged_workers", {}).get(mode)
    for level in entry.get("levels", []):
        if level.get("mode") == mode and level.get("workers") == workers:
            speedup = level["speedup"]
            return (
                f"x{speedup['median']:.2f} [{speedup['low']:.2f}, {speedup['high']:.2f}] @{workers}"
            )
    return "-"


def format_scaling_table(entries: list[dict[str, Any]]) -> list[str]:
    """Terminal-summary lines from ``to_json()`` dicts that carry a ``nodeid``."""
    if not entries:
        return []
    rows: list[Sequence[str]] = [ENTRY_HEADER]
    for entry in entries:
        rows.append(
            (
                str(entry.get("nodeid", entry.get("unit", "?"))),
                str(entry.get("verdict", "?")),
                _mode_cell(entry, THREADS),
                _mode_cell(entry, PROCESSES),
                str(entry.get("usable_cores", "?")),
                "on" if entry.get("gil_enabled", True) else "off",
            )
        )
    lines = _aligned(rows)
    for entry in entries:
        reasons = entry.get("reasons") or ["(no reason given)"]
        lines.append(f"{entry.get('nodeid', '?')}: {entry.get('verdict')}: {reasons[0]}")
    return lines
