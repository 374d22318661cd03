"""The result of a scaling measurement: :class:`ScalingReport`, its text and its JSON.

:func:`analyze` turns round records into a report (statistics from
:mod:`~pytest_concurrency.scaling.stats`, the verdict from
:mod:`~pytest_concurrency.scaling.verdict`); :func:`summary_lines` is its table and reasons,
:func:`report_json` its plain data for the JSON report, and :func:`format_scaling_table` the
terminal summary of several reports. Pure functions of the records, tested on synthetic
numbers. The method is described in :mod:`pytest_concurrency.scaling.api`. Pure module: no
pytest import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_concurrency.errors import ScalingUsageError
from pytest_concurrency.scaling import messages as scaling_messages
from pytest_concurrency.scaling.records import WaitSite
from pytest_concurrency.scaling.stats import (
    CI_COVERAGE,
    Interval,
    LevelStats,
    MeasurementContext,
    RoundRecord,
    UslFit,
    fit_usl,
    level_stats,
)
from pytest_concurrency.scaling.verdict import (
    MACHINE,
    MODES,
    PROCESSES,
    SCALES_EFFICIENCY,
    THREADS,
    decide,
    describe_level,
    judge_mode,
    set_aside_reason,
)

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
        raise ScalingUsageError(
            scaling_messages.SCALING_NOT_MEASURED.format(
                workers=workers, mode=mode, levels=measured
            )
        )

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


# --------------------------------------------------------------------------- the summary table


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
