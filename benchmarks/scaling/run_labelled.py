"""Run each labelled scaling case several times and print whether each verdict was right.

    python benchmarks/scaling/run_labelled.py [--runs 5] [--budget 10] [--quiet-limit 0.25]

This is a shared virtual machine, and the labels are about the code, not about the
neighbours. So before each measurement the script waits (up to ``--quiet-wait`` seconds)
until other programs plus the hypervisor (steal time: other virtual machines on the host)
take less than ``--quiet-limit`` cores for ``--quiet-window`` seconds, and it counts a
measurement only if they *stayed* under that limit while it ran; it keeps
measuring (up to ``--max-attempts``) until it has ``--runs`` counted measurements. Each case's
disturbed measurements are listed too: on a busy machine the right answer is
``environment-limited`` or ``inconclusive``, and any other verdict there that is not the
case's label is counted as misleading.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from cases import CASES, Case  # noqa: E402

from pytest_concurrency.engine.cores import core_budget, describe_interpreter  # noqa: E402
from pytest_concurrency.scaling.api import measure_scaling  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far (from ``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    busy = sum(fields[:8]) - fields[3] - fields[4] - fields[7]
    return busy / TICKS, fields[7] / TICKS


def own_seconds() -> float:
    """CPU seconds used by this process and its reaped children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class NeighbourMeter:
    """How many cores' worth other programs, and the hypervisor (steal), took over an interval.

    Steal is CPU time the host gave to other virtual machines while this one wanted it.
    """

    def __init__(self) -> None:
        self.start = (time.monotonic(), *cpu_seconds(), own_seconds())

    def cores(self) -> float:
        """Other programs' cores plus stolen cores, on average since the meter started."""
        wall0, busy0, steal0, own0 = self.start
        wall = time.monotonic() - wall0
        busy, steal = cpu_seconds()
        others = (busy - busy0) - (own_seconds() - own0)
        return max(0.0, others + steal - steal0) / wall if wall > 0 else 0.0


def wait_for_quiet(limit: float, window: float, patience: float) -> float:
    """Wait until neighbours use under ``limit`` cores for ``window`` s; the seconds waited."""
    started = time.monotonic()
    while True:
        meter = NeighbourMeter()
        time.sleep(window)
        if meter.cores() < limit or time.monotonic() - started > patience:
            return time.monotonic() - started


@dataclass
class CaseResult:
    counted: list[str] = field(default_factory=list)
    disturbed: list[tuple[str, float]] = field(default_factory=list)


HONEST_WHEN_DISTURBED = ("environment-limited", "inconclusive")


def run_case(case: Case, args: argparse.Namespace, charts: list[dict[str, Any]]) -> CaseResult:
    result = CaseResult()
    for attempt in range(args.max_attempts):
        if len(result.counted) >= args.runs:
            break
        waited = wait_for_quiet(args.quiet_limit, args.quiet_window, args.quiet_wait)
        meter = NeighbourMeter()
        report = measure_scaling(case.fn, budget=args.budget, seed=attempt)
        neighbours = meter.cores()
        counted = neighbours < args.quiet_limit
        if args.json is not None:
            entry = {"case": case.name, "neighbours": neighbours, "counted": counted}
            with args.json.open("a") as out:
                out.write(json.dumps({**entry, **report.to_json()}) + "\n")
        if counted:
            result.counted.append(report.verdict)
            charts[:] = [c for c in charts if c["nodeid"] != case.name]
            charts.append({"kind": "scaling", "nodeid": case.name, **report.to_json()})
        else:
            result.disturbed.append((report.verdict, neighbours))
        if args.verbose:
            print(report.summary(), file=sys.stderr, flush=True)
        print(
            f"  {case.name} attempt {attempt + 1}: {report.verdict} (neighbours "
            f"{neighbours:.2f} cores{'' if counted else ', not counted'}; waited {waited:.0f} s; "
            f"measured in {report.context.elapsed:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--quiet-limit", type=float, default=0.25)
    parser.add_argument("--quiet-window", type=float, default=3.0)
    parser.add_argument("--quiet-wait", type=float, default=1800.0)
    parser.add_argument("--max-attempts", type=int, default=20)
    parser.add_argument("--case", action="append", default=[], help="substring of case names")
    parser.add_argument("--verbose", action="store_true", help="print every report's table")
    parser.add_argument(
        "--json", type=Path, help="append every measurement's JSON report here, one a line"
    )
    parser.add_argument(
        "--charts", type=Path, help="write the last counted run's chart of each case here"
    )
    args = parser.parse_args()
    print(
        f"machine: {core_budget().describe()}; nproc {os.cpu_count()}; "
        f"{describe_interpreter()}; {platform.platform()}"
    )
    print(
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"command: python {' '.join(sys.argv)}"
    )
    rows = []
    charts: list[dict[str, Any]] = []
    all_right = True
    for case in CASES:
        if args.case and not any(part in case.name for part in args.case):
            continue
        result = run_case(case, args, charts)
        right = len(result.counted) == args.runs and all(
            verdict in case.expected for verdict in result.counted
        )
        misleading = [
            verdict
            for verdict, _ in result.disturbed
            if verdict not in case.expected and verdict not in HONEST_WHEN_DISTURBED
        ]
        all_right &= right and not misleading
        disturbed = ", ".join(f"{verdict} ({cores:.2f})" for verdict, cores in result.disturbed)
        rows.append(
            (
                case.name,
                " or ".join(case.expected),
                ", ".join(result.counted),
                "right" if right else "WRONG",
                disturbed or "-",
                f"{len(misleading)} misleading" if misleading else "none misleading",
            )
        )
    header = (
        "case",
        "expected",
        f"verdicts of {args.runs} counted runs",
        "result",
        "disturbed runs: verdict (neighbour cores)",
        "disturbed result",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.charts is not None:
        from pytest_concurrency.scaling.plot import write_charts

        for path in write_charts(charts, args.charts):
            print(f"chart: {path}")
    return 0 if all_right else 1


if __name__ == "__main__":
    raise SystemExit(main())
