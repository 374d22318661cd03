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

Layout: the settings and the plan (what to measure) are in
:mod:`~pytest_concurrency.scaling.plan`; the statistics
(:mod:`~pytest_concurrency.scaling.stats`), the verdict
(:mod:`~pytest_concurrency.scaling.verdict`) and the report with its text and JSON
(:mod:`~pytest_concurrency.scaling.report`) are pure functions of
:class:`~pytest_concurrency.scaling.stats.RoundRecord` lists, tested on synthetic numbers; one
round is run by :mod:`~pytest_concurrency.scaling.measure` (and
:mod:`~pytest_concurrency.scaling.child` in the worker processes). This module holds the
user-facing API the ``scaling`` fixture and marker call: :func:`measure_scaling` (which
returns a :class:`~pytest_concurrency.scaling.report.ScalingReport`) and
:func:`check_expectation`. Pure module: no pytest import.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from pytest_concurrency.engine.cores import core_budget, free_threaded_build, gil_enabled
from pytest_concurrency.errors import ScalingUsageError
from pytest_concurrency.scaling import messages as scaling_messages
from pytest_concurrency.scaling.child import reference_work
from pytest_concurrency.scaling.measure import (
    ProcessPool,
    Unit,
    WaitSampler,
    read_cpu_counters,
    run_thread_round,
    steal_share,
)
from pytest_concurrency.scaling.plan import (
    MeasurementPlan,
    check_budget,
    plan_calls,
    plan_levels,
    reference_levels,
    unit_name,
    validate_budget,
    validate_modes,
    validate_rounds,
    validate_seed,
    validate_unit,
)
from pytest_concurrency.scaling.records import WaitSite
from pytest_concurrency.scaling.report import ScalingReport, analyze
from pytest_concurrency.scaling.stats import MeasurementContext, RoundRecord
from pytest_concurrency.scaling.verdict import (
    CONTENDED,
    MACHINE,
    MODES,
    PROCESSES,
    SERIAL,
    THREADS,
    VERDICTS,
)

__all__ = ["check_expectation", "measure_scaling", "validate_expectation"]

# --------------------------------------------------------------------------- limits

OVER_BUDGET_WARNING = 1.5
"""A measurement that took this many budgets says so in its reasons."""
CALIBRATION_SHARE = 0.02
"""Share of the budget spent timing the unit before planning."""
REFERENCE_CALIBRATION_SECONDS = 0.03
REFERENCE_UNIT = Unit(reference_work, (), {})
ROUND_DEADLINE_FLOOR = 10.0
ROUND_DEADLINE_FACTOR = 20.0
"""A round may take this many times its worst-case planned time (at least the floor)."""

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
    validate_seed(seed)
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
            scaling_messages.SCALING_OVER_BUDGET.format(
                elapsed=report.context.elapsed, budget=budget_s, call=seconds_per_call
            )
        )
    return report


def _expected_words(expect: str | Iterable[str]) -> tuple[str, ...]:
    words = (expect,) if isinstance(expect, str) else tuple(expect)
    for word in words:
        if word not in VERDICTS:
            raise ScalingUsageError(
                scaling_messages.SCALING_UNKNOWN_EXPECT.format(
                    value=word, choices=", ".join(VERDICTS)
                )
            )
    if not words:
        raise ScalingUsageError(
            scaling_messages.SCALING_UNKNOWN_EXPECT.format(
                value=expect, choices=", ".join(VERDICTS)
            )
        )
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
        raise ScalingUsageError(
            scaling_messages.SCALING_BAD_MIN_EFFICIENCY.format(value=min_efficiency)
        )


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
                scaling_messages.SCALING_EXPECT_FAILED.format(
                    expected=" or ".join(words), verdict=report.verdict
                )
            )
    if min_efficiency is not None:
        if not report.judged_workers:
            failures.append(scaling_messages.SCALING_NO_JUDGED_LEVEL)
        for mode, workers in report.judged_workers.items():
            level = report.level(mode, workers)
            if level.efficiency < min_efficiency:
                failures.append(
                    scaling_messages.SCALING_EFFICIENCY_FAILED.format(
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
