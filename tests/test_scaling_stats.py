"""Unit tests of the scaling statistics and verdicts, on synthetic measurements (no timing)."""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Sequence

import pytest

from pytest_concurrency.errors import ScalingUsageError
from pytest_concurrency.scaling import plan as scaling_plan
from pytest_concurrency.scaling import stats
from pytest_concurrency.scaling.api import check_expectation, measure_scaling
from pytest_concurrency.scaling.records import WaitSite, WorkerSample
from pytest_concurrency.scaling.report import analyze, format_scaling_table
from pytest_concurrency.scaling.stats import MeasurementContext, RoundRecord, median_interval

ROUNDS = 9
BATCH = 0.1

# A round's wall time at N workers and each worker's busy share, as a function of N.
Shape = Callable[[int], tuple[float, float]]


def record(
    mode: str,
    workers: int,
    round_index: int,
    wall: float,
    busy: float,
    queue: float | None = 0.0,
    steal: float | None = 0.0,
    cpu: float | None = None,
) -> RoundRecord:
    """A round in which every worker ran for ``wall`` seconds, on a CPU ``busy`` of the time
    (or for ``cpu`` seconds of CPU time, when given)."""
    used = busy * wall if cpu is None else cpu
    samples = tuple(
        WorkerSample(0.0, wall, used, None if queue is None else queue * wall)
        for _ in range(workers)
    )
    return RoundRecord(mode, workers, round_index, samples, steal)


def measurements(
    shapes: dict[str, Shape],
    levels: dict[str, Sequence[int]] | None = None,
    rounds: int = ROUNDS,
    jitter: Callable[[str, int, int], float] = lambda mode, n, r: 1.0,
    speed: Callable[[str, int, int], float] = lambda mode, n, r: 1.0,
    queue: Callable[[str, int, int], float] = lambda mode, n, r: 0.0,
) -> list[RoundRecord]:
    levels = levels or {"threads": (1, 2, 3, 4), "processes": (1, 2)}
    out = []
    for r in range(rounds):
        for mode, shape in shapes.items():
            for n in levels[mode]:
                wall, busy = shape(n)
                # jitter: the workers waited longer (CPU time unchanged); speed: the CPU ran
                # slower (wall and CPU time both stretch, as on a host shared with other VMs)
                stretch = speed(mode, n, r)
                slowed = wall * jitter(mode, n, r) * stretch
                cpu = busy * wall * stretch
                out.append(record(mode, n, r, slowed, busy, queue(mode, n, r), cpu=cpu))
    return out


def context(cores: int = 2, gil: bool = True) -> MeasurementContext:
    return MeasurementContext(
        usable_cores=cores,
        gil_enabled=gil,
        free_threaded=not gil,
        cores_description=f"{cores} usable",
        unit="unit",
    )


def cpu_bound_parallel(cores: int = 2) -> Shape:
    """Each worker needs a core: N workers take ceil(N / cores) batches of time."""
    return lambda n: (BATCH * math.ceil(n / cores), 1.0 / math.ceil(n / cores))


def one_at_a_time(busy_alone: float = 1.0) -> Shape:
    """Only one worker runs at a time (the GIL, a shared lock): N batches of time."""
    return lambda n: (BATCH * n, busy_alone / n)


def waiting(n: int) -> tuple[float, float]:
    """Workers sleep: they overlap perfectly and use almost no CPU."""
    return (BATCH, 0.01)


GIL_BOUND = {"threads": one_at_a_time(), "processes": cpu_bound_parallel()}
IO_BOUND = {"threads": waiting, "processes": waiting}
SCALES = {"threads": cpu_bound_parallel(), "processes": cpu_bound_parallel()}
SERIAL = {"threads": one_at_a_time(), "processes": one_at_a_time()}


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("shapes", "verdict"),
    [
        (GIL_BOUND, "gil-bound"),
        (IO_BOUND, "io-bound"),
        (SCALES, "scales"),
        (SERIAL, "serial"),
    ],
    ids=["gil-bound", "io-bound", "scales", "serial"],
)
def test_verdicts_of_clear_shapes(shapes: dict[str, Shape], verdict: str) -> None:
    report = analyze(measurements(shapes), context())
    assert report.verdict == verdict, report.summary()
    assert report.reasons


def test_gil_bound_reasons_say_threads_take_turns_on_one_core() -> None:
    report = analyze(measurements(GIL_BOUND), context())
    text = " ".join(report.reasons)
    assert "GIL" in text
    assert "1.00 cores of CPU" in text


def test_io_bound_needs_threads_past_the_cores() -> None:
    report = analyze(measurements(IO_BOUND), context())
    assert "more than the 2 usable cores" in report.reasons[0]
    assert report.speedup("threads", 4) == pytest.approx(4.0)


def test_partial_gain_is_contended() -> None:
    partial = {"processes": lambda n: (BATCH * (1 + 0.5 * (n - 1)), 1.0 / (1 + 0.5 * (n - 1)))}
    report = analyze(measurements(partial, {"processes": (1, 2, 3, 4)}), context(cores=4))
    assert report.verdict == "contended", report.summary()
    assert any("wait for each other" in reason for reason in report.reasons)


def test_getting_slower_with_workers_is_contended() -> None:
    slower = {"processes": lambda n: (BATCH * 2.5 * (n > 1) + BATCH * (n == 1), 0.4)}
    report = analyze(measurements(slower, {"processes": (1, 2)}), context())
    assert report.verdict == "contended"
    assert "slower" in report.reasons[0]


def test_threads_scaling_but_not_processes_is_contended_between_processes() -> None:
    shapes = {"threads": cpu_bound_parallel(), "processes": one_at_a_time()}
    report = analyze(measurements(shapes), context())
    assert report.verdict == "contended"
    assert "between processes" in report.reasons[0]


def test_contended_names_the_wait_site_when_seen() -> None:
    site = WaitSite("bench.py:12 in work", "with LOCK:", 0.75, 400)
    report = analyze(measurements(SERIAL), context(), wait_site=site)
    assert any("bench.py:12 in work: `with LOCK:` (75% of 400" in r for r in report.reasons)
    assert report.to_json()["wait_site"]["location"] == "bench.py:12 in work"


def test_only_threads_measured_does_not_blame_the_gil() -> None:
    report = analyze(measurements({"threads": one_at_a_time()}), context())
    assert report.verdict == "serial"
    assert any("measure processes too" in reason for reason in report.reasons)


# --------------------------------------------------------------------------- free-threaded builds


def test_free_threaded_threads_that_scale_are_said_to_scale_because_of_the_build() -> None:
    report = analyze(measurements(SCALES), context(gil=False))
    assert report.verdict == "scales"
    assert any("free-threaded build" in reason for reason in report.reasons)
    assert report.to_json()["gil_enabled"] is False


def test_with_the_gil_threads_that_scale_are_said_to_release_it() -> None:
    report = analyze(measurements(SCALES), context(gil=True))
    assert any("releases the GIL" in reason for reason in report.reasons)


def test_free_threaded_threads_flat_while_processes_scale_is_not_gil_bound() -> None:
    report = analyze(measurements(GIL_BOUND), context(gil=False))
    assert report.verdict == "contended"
    assert "free-threaded" in report.reasons[0]


# --------------------------------------------------------------------------- the machine


def held_back(share: float) -> Callable[[str, int, int], float]:
    """Other programs hold two worker processes back in every round (run-queue delay);
    threads blocked on each other do not queue for a CPU."""
    return lambda mode, n, r: share if (n == 2 and mode == "processes") else 0.0


def processes_held_back(share: float) -> Shape:
    """Independent workers, each running only ``1 - share`` of the time at two workers."""
    return lambda n: (BATCH / (1 - share) if n == 2 else BATCH, 1 - share if n == 2 else 1.0)


def test_workers_waiting_for_a_cpu_in_every_round_are_environment_limited() -> None:
    shapes = {"threads": one_at_a_time(), "processes": processes_held_back(0.6)}
    report = analyze(measurements(shapes, queue=held_back(0.6)), context())
    assert report.verdict == "environment-limited", report.summary()
    assert "waited 60% of its time for a CPU" in report.reasons[0]
    hints = [reason for reason in report.reasons if "free machine" in reason]
    assert len(hints) == 1
    assert hints[0].startswith("threads: the workers also waited for each other")


def test_waits_above_the_cores_are_our_own_not_the_machines() -> None:
    waits = {"threads": lambda n: (BATCH * n / 2 if n > 2 else BATCH, 1.0)}

    def queued(mode: str, n: int, r: int) -> float:
        return 0.5 if n > 2 else 0.0

    report = analyze(measurements(waits, {"threads": (1, 2, 3, 4)}, queue=queued), context())
    assert not report.level("threads", 4).machine_short
    assert report.verdict == "scales"


def test_disturbed_rounds_are_set_aside_when_enough_clean_ones_remain() -> None:
    def noisy(mode: str, n: int, r: int) -> float:
        return 0.5 if (n == 2 and r < 3) else 0.0

    def slowed(mode: str, n: int, r: int) -> float:
        return 3.0 if (n == 2 and r < 3) else 1.0

    records = measurements(SCALES, jitter=slowed, queue=noisy)
    report = analyze(records, context())
    assert report.verdict == "scales", report.summary()
    level = report.level("processes", 2)
    assert (level.rounds, level.set_aside) == (ROUNDS - 3, 3)
    assert report.speedup("processes", 2) == pytest.approx(2.0)
    assert any("3 of 9 rounds with 2 workers set aside" in r for r in report.reasons)


def test_hypervisor_steal_counts_as_a_disturbance() -> None:
    records = [
        RoundRecord(r.mode, r.workers, r.round, r.samples, steal=0.3)
        for r in measurements(GIL_BOUND)
    ]
    report = analyze(records, context())
    assert report.verdict == "environment-limited"
    assert "the hypervisor took 30% of the CPU time (steal)" in report.reasons[0]
    assert all(level.machine_short for level in report.levels["threads"])


def test_one_usable_core_cannot_judge_scaling() -> None:
    report = analyze(measurements(SCALES), context(cores=1))
    assert report.verdict == "environment-limited"
    assert "only 1 usable core" in report.reasons[0]


def test_one_usable_core_still_sees_io() -> None:
    report = analyze(measurements(IO_BOUND), context(cores=1))
    assert report.verdict == "io-bound"


# --------------------------------------------------------------------------- the machine's reference


def smt_like(capacity: float) -> Shape:
    """Independent CPU work on a machine whose cores give ``capacity`` x at two workers:
    each call costs 2 / capacity times the CPU time when both run (hyperthreads)."""
    return lambda n: (BATCH * (2 / capacity if n == 2 else 1.0), 1.0)


WITH_REFERENCE = {"threads": (1, 2, 3, 4), "processes": (1, 2), "machine": (1, 2)}


def test_cpu_bound_modes_are_judged_against_what_the_machine_delivers() -> None:
    shapes = {"threads": smt_like(1.55), "processes": smt_like(1.55), "machine": smt_like(1.6)}
    report = analyze(measurements(shapes, WITH_REFERENCE), context())
    assert report.verdict == "scales", report.summary()
    assert any(r.startswith("reference: the machine delivered x1.60") for r in report.reasons)
    assert report.to_json()["machine_reference"][1]["speedup"]["median"] == pytest.approx(1.6)


def test_gil_bound_on_a_machine_of_hyperthreads() -> None:
    shapes = {"threads": one_at_a_time(), "processes": smt_like(1.6), "machine": smt_like(1.6)}
    report = analyze(measurements(shapes, WITH_REFERENCE), context())
    assert report.verdict == "gil-bound", report.summary()
    assert not any("slow each other down" in reason for reason in report.reasons)


def test_gil_bound_when_processes_are_busy_but_short_of_the_bar() -> None:
    """Processes keep both cores busy but each interpreted call costs more CPU beside another
    (hyperthreads), while the reference unit in C does not slow: the threads are still held
    back by the GIL, and the verdict says so rather than 'contended' or 'inconclusive'."""
    shapes = {"threads": one_at_a_time(), "processes": smt_like(1.35), "machine": smt_like(1.98)}
    report = analyze(measurements(shapes, WITH_REFERENCE), context())
    assert report.verdict == "gil-bound", report.summary()
    assert any("processes keep 2.00 cores busy but fall short" in r for r in report.reasons)
    assert any(r.startswith("processes: each call took 1.47 times") for r in report.reasons)


def test_processes_straddling_the_bar_with_flat_threads_on_one_core_is_gil_bound() -> None:
    spread = [1.3, 1.35, 1.4, 1.45, 1.5, 1.55, 1.6, 1.65, 1.7]

    def jitter(mode: str, n: int, r: int) -> float:
        return 2 / spread[r] if mode == "processes" and n == 2 else 1.0

    shapes = {"threads": one_at_a_time(), "processes": cpu_bound_parallel()}
    report = analyze(measurements(shapes, jitter=jitter), context())
    assert report.verdict == "gil-bound", report.summary()


def test_flat_threads_beside_processes_that_are_not_clearly_faster_is_not_gil_bound() -> None:
    shapes = {"threads": one_at_a_time(), "processes": lambda n: (BATCH * n * 0.9, 1.0 / n)}
    report = analyze(measurements(shapes), context())
    assert report.verdict != "gil-bound", report.summary()


def test_a_machine_delivering_too_little_to_the_reference_is_environment_limited() -> None:
    shapes = {"threads": one_at_a_time(), "processes": smt_like(1.1), "machine": smt_like(1.1)}
    report = analyze(measurements(shapes, WITH_REFERENCE), context())
    assert report.verdict == "environment-limited", report.summary()
    assert report.reasons[0].startswith("the machine delivered only x1.10")


def test_the_machine_reference_does_not_touch_waiting_work() -> None:
    shapes = {**IO_BOUND, "machine": smt_like(1.1)}
    assert analyze(measurements(shapes, WITH_REFERENCE), context()).verdict == "io-bound"


# --------------------------------------------------------------------------- CPU speed


def test_a_cpu_changing_speed_between_records_does_not_blur_the_speedup() -> None:
    def host_noise(mode: str, n: int, r: int) -> float:
        return (0.6, 1.0, 1.7)[(r * 7 + n) % 3]

    report = analyze(measurements(SCALES, speed=host_noise), context())
    assert report.verdict == "scales", report.summary()
    level = report.level("processes", 2)
    assert level.speedup.low == pytest.approx(2.0)
    assert level.raw_speedup is not None and level.raw_speedup.low < 1.5


def test_calls_costing_more_cpu_with_more_workers_is_contended_and_said_so() -> None:
    inflated = {"processes": lambda n: (BATCH * (1 if n == 1 else 2), 1.0)}
    report = analyze(measurements(inflated, {"processes": (1, 2)}), context())
    assert report.verdict == "contended", report.summary()
    assert report.level("processes", 2).cost_ratio == pytest.approx(2.0)
    assert any("each call took 2.00 times the CPU time" in r for r in report.reasons)


# --------------------------------------------------------------------------- inconclusive


def test_interval_straddling_the_threshold_is_inconclusive() -> None:
    spread = [1.2, 1.3, 1.4, 1.45, 1.5, 1.55, 1.7, 1.8, 1.9]

    def jitter(mode: str, n: int, r: int) -> float:
        return 2 / spread[r] if n == 2 else 1.0

    report = analyze(
        measurements({"processes": lambda n: (BATCH, 1.0)}, {"processes": (1, 2)}, jitter=jitter),
        context(),
    )
    assert report.verdict == "inconclusive", report.summary()
    assert "straddles x1.50" in report.reasons[0]


# --------------------------------------------------------------------------- statistics


def test_median_interval_uses_order_statistics_with_their_exact_coverage() -> None:
    values = [5, 1, 9, 3, 7, 2, 8, 4, 6]
    interval = median_interval(values)
    assert interval.median == 5
    assert (interval.low, interval.high) == (2, 8)
    assert interval.coverage == pytest.approx(1 - 2 * 10 / 512)


def test_median_interval_of_few_values_is_the_range_with_lower_coverage() -> None:
    interval = median_interval([3.0, 1.0, 2.0, 4.0])
    assert (interval.low, interval.high) == (1.0, 4.0)
    assert interval.coverage == pytest.approx(0.875)


def test_karp_flatt_serial_fraction() -> None:
    assert stats.karp_flatt(2.0, 2) == pytest.approx(0.0)
    assert stats.karp_flatt(1.0, 4) == pytest.approx(1.0)
    assert stats.karp_flatt(1.0, 1) is None


def test_usl_fit_recovers_known_coefficients() -> None:
    truth = stats.UslFit(sigma=0.05, kappa=0.002, r_squared=1.0)
    points = [(n, truth.capacity(n)) for n in (1, 2, 4, 8, 16, 32)]
    fit = stats.fit_usl(points)
    assert fit is not None
    assert fit.sigma == pytest.approx(0.05, abs=1e-6)
    assert fit.kappa == pytest.approx(0.002, abs=1e-6)
    assert fit.peak_workers == pytest.approx(math.sqrt(0.95 / 0.002))


def test_usl_fit_needs_six_levels() -> None:
    assert stats.fit_usl([(n, float(n)) for n in (1, 2, 3, 4, 5)]) is None


def test_usl_fit_appears_in_the_report_only_with_six_levels() -> None:
    levels = {"processes": (1, 2, 3, 4, 6, 8)}
    report = analyze(measurements({"processes": cpu_bound_parallel(8)}, levels), context(cores=8))
    assert report.to_json()["usl"]["processes"]["sigma"] == pytest.approx(0.0, abs=1e-9)
    assert analyze(measurements(SCALES), context()).to_json()["usl"] is None


# --------------------------------------------------------------------------- the plan


def test_default_levels_reach_twice_the_cores_for_threads() -> None:
    levels = scaling_plan.plan_levels(2, None, ("threads", "processes"))
    assert levels == {"threads": (1, 2, 3, 4), "processes": (1, 2)}


def test_default_levels_on_many_cores_stay_few_and_include_the_ends() -> None:
    levels = scaling_plan.plan_levels(32, None, ("threads",))["threads"]
    assert levels[0] == 1 and levels[-1] == 64
    assert len(levels) <= scaling_plan.MAX_DEFAULT_LEVELS


def test_explicit_worker_list_always_includes_one() -> None:
    assert scaling_plan.plan_levels(2, [4, 2], ("threads",)) == {"threads": (1, 2, 4)}


@pytest.mark.parametrize("workers", [0, 1, -3, 10_000, [1], [], "4", 2.5, [0, 2], True])
def test_unusable_worker_counts_name_the_fix(workers: object) -> None:
    with pytest.raises(ScalingUsageError, match="give the largest worker count"):
        scaling_plan.plan_levels(2, workers, ("threads",))  # type: ignore[arg-type]


def test_round_order_is_shuffled_by_the_seed_and_visits_everything() -> None:
    import random

    plan = scaling_plan.MeasurementPlan(levels={"threads": (1, 2, 3, 4), "processes": (1, 2)})
    first = plan.round_order(random.Random(7))
    assert first == plan.round_order(random.Random(7))
    assert sorted(first) == sorted(plan.round_order(random.Random(8)))
    assert len(first) == 6


def test_batch_is_sized_for_the_worst_case_within_the_budget() -> None:
    levels = {"threads": (1, 2, 3, 4), "processes": (1, 2)}
    plan = scaling_plan.plan_calls(levels, seconds_per_call=0.001, remaining=9.0, rounds=None)
    worst_round = plan.weight * plan.calls * 0.001
    assert worst_round * scaling_plan.TARGET_ROUNDS <= 9.0
    assert plan.calls * 0.001 >= scaling_plan.MIN_BATCH_SECONDS
    fixed = scaling_plan.plan_calls(levels, 0.001, 9.0, rounds=4)
    assert (fixed.min_rounds, fixed.max_rounds) == (4, 4)


def test_a_unit_too_slow_for_the_budget_is_refused_with_the_numbers() -> None:
    levels = {"threads": (1, 2, 3, 4), "processes": (1, 2)}
    plan = scaling_plan.plan_calls(levels, seconds_per_call=3.0, remaining=9.0, rounds=None)
    with pytest.raises(
        ScalingUsageError, match=r"one call of slow takes 3 s.*pass a larger budget"
    ):
        scaling_plan.check_budget(plan, 3.0, 10.0, "slow")
    fast = scaling_plan.plan_calls(levels, seconds_per_call=0.001, remaining=9.0, rounds=None)
    scaling_plan.check_budget(fast, 0.001, 10.0, "fast")


# --------------------------------------------------------------------------- usage errors


def module_level_unit() -> None:
    pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modes": ("asyncio",)}, "cannot use more cores"),
        ({"modes": ("fibers",)}, "unknown mode 'fibers'"),
        ({"modes": ()}, "modes= is empty"),
        ({"workers": 0}, "give the largest worker count"),
        ({"rounds": 1}, "rounds=1 is not usable"),
        ({"budget": -1}, "budget=-1 is not usable"),
        ({"seed": "x"}, "seed='x' is not an integer"),
    ],
)
def test_measure_scaling_rejects_bad_arguments_before_measuring(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ScalingUsageError, match=message):
        measure_scaling(module_level_unit, **kwargs)  # type: ignore[arg-type]


def test_unpicklable_unit_in_process_mode_says_define_it_at_module_level() -> None:
    with pytest.raises(ScalingUsageError, match="define the function at module level"):
        measure_scaling(lambda: None, modes=("processes",))


def test_coroutine_unit_is_refused() -> None:
    async def work() -> None:
        pass

    with pytest.raises(ScalingUsageError, match="coroutine function"):
        measure_scaling(work, modes=("threads",))


def test_usage_error_is_a_value_error() -> None:
    assert issubclass(ScalingUsageError, ValueError)


# --------------------------------------------------------------------------- report and gates


def test_report_accessors_and_unknown_level() -> None:
    report = analyze(measurements(SCALES), context())
    assert report.speedup("threads", 2) == pytest.approx(2.0)
    assert report.efficiency("threads", 4) == pytest.approx(0.5)
    with pytest.raises(ScalingUsageError, match="no measurement with 8 threads"):
        report.speedup("threads", 8)


def test_json_has_the_documented_fields_and_is_plain_data() -> None:
    data = analyze(measurements(GIL_BOUND), context()).to_json()
    json.dumps(data)
    pickle.dumps(data)
    for key in ("verdict", "reasons", "gil_enabled", "usable_cores", "levels", "usl"):
        assert key in data
    level = next(lv for lv in data["levels"] if lv["mode"] == "processes" and lv["workers"] == 2)
    assert len(level["wall_s"]) == ROUNDS
    assert len(level["cpu_s"][0]) == 2
    assert set(level["speedup"]) == {"median", "low", "high", "coverage"}
    assert level["efficiency"] == pytest.approx(1.0)
    assert level["serial_fraction"] == pytest.approx(0.0)


def test_summary_has_the_table_the_verdict_and_the_reasons() -> None:
    summary = analyze(measurements(GIL_BOUND), context()).summary()
    assert summary.splitlines()[0] == "scaling of unit: gil-bound"
    assert "speedup" in summary and "efficiency" in summary and "serial fr." in summary
    assert "reasons:" in summary


def test_check_expectation_passes_and_fails_with_the_table() -> None:
    report = analyze(measurements(GIL_BOUND), context())
    assert check_expectation(report, expect="gil-bound") is None
    assert check_expectation(report, expect=("serial", "gil-bound")) is None
    failure = check_expectation(report, expect="scales")
    assert failure is not None
    assert failure.startswith("scaling: expected scales, got gil-bound.")
    assert "efficiency" in failure


def test_check_expectation_min_efficiency_checks_every_mode() -> None:
    report = analyze(measurements(GIL_BOUND), context())
    failure = check_expectation(report, min_efficiency=0.8)
    assert failure is not None
    assert "efficiency 50% with 2 threads" in failure
    assert "processes" not in failure.splitlines()[0]
    assert check_expectation(analyze(measurements(SCALES), context()), min_efficiency=0.8) is None


@pytest.mark.parametrize(
    ("expect", "minimum", "message"),
    [("fast", None, "expect='fast' is not a verdict"), (None, 1.5, "min_efficiency=1.5")],
)
def test_check_expectation_rejects_unknown_words(
    expect: str | None, minimum: float | None, message: str
) -> None:
    report = analyze(measurements(SCALES), context())
    with pytest.raises(ScalingUsageError, match=message):
        check_expectation(report, expect=expect, min_efficiency=minimum)


def test_terminal_table_from_json_entries() -> None:
    entries = [
        {"nodeid": "t.py::test_a", **analyze(measurements(GIL_BOUND), context()).to_json()},
        {"nodeid": "t.py::test_b", **analyze(measurements(IO_BOUND), context()).to_json()},
    ]
    lines = format_scaling_table(entries)
    assert lines[0].split() == ["test", "verdict", "threads", "processes", "cores", "GIL"]
    assert lines[1].startswith("t.py::test_a") and "gil-bound" in lines[1]
    assert "x1.00 [1.00, 1.00] @2" in lines[1] and "x2.00 [2.00, 2.00] @2" in lines[1]
    assert any(line.startswith("t.py::test_b: io-bound: threads reach") for line in lines)
    assert format_scaling_table([]) == []


def test_scaling_marker_keywords_are_checked_by_name_in_the_plan() -> None:
    given = {"workers": 2, "expect": "scales", "force": True}
    assert scaling_plan.marker_options((), given) == given
    with pytest.raises(ScalingUsageError, match=r"unknown argument 'worker'; use workers, modes"):
        scaling_plan.marker_options((), {"worker": 2})
    with pytest.raises(ScalingUsageError, match=r"keyword arguments only.*got positional \(2,\)"):
        scaling_plan.marker_options((2,), {})
