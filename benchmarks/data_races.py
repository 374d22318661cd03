"""The data-race watch (issue 18): what it finds in one quiet run, and what it costs.

**Detection.** Every module of the race corpus (``benchmarks/races/``) runs ``--invocations``
times, one pytest session each with its own seed, with exactly one run per test
(``--concurrency-replay-runs=1``, whatever the marker or ``runs()`` say) and perturbation off
(``--concurrency-perturb=false``), so that the bad interleaving almost never happens. A race is
*reported* when its buggy test's JSON entry has ``data_races``; a twin is a *false alarm* when
its entry has any. The buggy tests also fail (strict xfail) when an assertion catches the race;
that is counted apart (``by assertion``).

**Cost.** One thread runs a loop of the user's code (this file is the code under test: attribute
loads and stores, a subscript, a call), timed in its thread CPU time, three ways: untraced;
inside a perturbation call that never gives way (``perturbation``); and the same with the
data-race watch around it (``watched``). Medians of interleaved repeats; the extra time per
decision point and the ratio watched / perturbation. Then per run, in pytest: the fixed twins
of the corpus with perturbation on, their call time with the watch against without it
(``--concurrency-data-races=off``), in interleaved pairs.

    python benchmarks/data_races.py [--invocations 10] [--loops 2000] [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import timed_calls, user_loop

from pytest_concurrency.races import perturb
from pytest_concurrency.races.datarace import QUIET_PROFILE, DataRaceWatch
from pytest_concurrency.races.perturb import SeededPerturbation, seeded_perturbation

HERE = Path(__file__).resolve().parent
RACES_DIR = HERE / "races"
MODULES = (
    "test_lost_update_no_call.py",
    "test_lost_update_call.py",
    "test_check_then_act_cache.py",
    "test_lazy_singleton.py",
    "test_bank_withdraw.py",
    "test_unique_ids.py",
    "test_iterate_while_mutating.py",
    "test_bounded_buffer.py",
    "test_two_dicts.py",
    "test_request_context.py",
    "test_shared_generator.py",
    "test_sqlite_check_then_insert.py",
)
SESSION_ARGS = (
    "-q",
    "--no-header",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:asyncio",
    "-p",
    "no:randomly",
    "-p",
    "no:run-parallel",
    "--concurrency-replay-runs=1",
    "--concurrency-perturb=false",
)


# -- detection ----------------------------------------------------------------------------


def one_session(module: str, seed: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pytest", module, *SESSION_ARGS,
             f"--concurrency-seed={seed}", f"--concurrency-json={report}"],
            cwd=RACES_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=600, check=False,
        )  # fmt: skip
        if not report.exists():
            return []
        return [e for e in json.loads(report.read_text())["tests"] if e["kind"] == "concurrent"]


def detection(invocations: int) -> dict[str, dict[str, Any]]:
    """Per test: sessions, how many reported a data race, how many failed by an assertion."""
    found: dict[str, dict[str, Any]] = {}
    for module in MODULES:
        for seed in range(1, invocations + 1):
            for entry in one_session(module, seed):
                name = entry["nodeid"]
                row = found.setdefault(
                    name,
                    {"sessions": 0, "reported": 0, "by_assertion": 0, "locations": set()},
                )
                row["sessions"] += 1
                row["reported"] += bool(entry.get("data_races"))
                row["by_assertion"] += bool(entry.get("failures"))
                row["locations"].update(r["location"] for r in entry.get("data_races") or [])
    return found


# -- cost ---------------------------------------------------------------------------------


def twins_call_seconds(watch: str, runs: int) -> float:
    """Seconds the fixed twins' calls took (junit call durations), ``runs`` runs each, with
    perturbation on and the watch ``watch`` ("fail" or "off")."""
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch) / "junit.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", *MODULES, "-k", "fixed", *SESSION_ARGS[:-2],
             f"--concurrency-replay-runs={runs}", "--concurrency-seed=1",
             f"--concurrency-data-races={watch}", f"--junitxml={junit}"],
            cwd=RACES_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=900, check=False,
        )  # fmt: skip
        tree = ElementTree.parse(junit)
        return sum(float(case.get("time", 0)) for case in tree.iter("testcase"))


def per_run_overhead(runs: int, repeats: int) -> dict[str, float]:
    """The twins' call time with the watch over perturbation alone, arms interleaved."""
    ratios, alone, watched = [], [], []
    for _ in range(repeats):
        off = twins_call_seconds("off", runs)
        on = twins_call_seconds("fail", runs)
        alone.append(off)
        watched.append(on)
        ratios.append(on / off if off else float("nan"))
    return {
        "perturbation_alone_s": statistics.median(alone),
        "with_watch_s": statistics.median(watched),
        "paired_ratio_median": statistics.median(ratios),
        "paired_ratio_min": min(ratios),
        "paired_ratio_max": max(ratios),
    }


class _Record:
    def __init__(self, index: int) -> None:
        self.index = index
        self.data_races: list[Any] = []
        self.failures: list[Any] = []


def timed(loops: int, calls: int, engine: Any) -> float:
    """Thread CPU seconds of ``calls`` calls of the loop (each one a worker call)."""
    if not isinstance(engine, DataRaceWatch):
        return timed_calls(user_loop, loops, engine, calls=calls)
    return timed_calls(  # the watch tells a run's races at its end, as the runner asks
        user_loop,
        loops,
        engine,
        calls=calls,
        after_call=lambda run: engine.describe_run(_Record(run)),
    )


def quiet_perturbation() -> SeededPerturbation:
    engine = seeded_perturbation([HERE], seed=1)
    engine.fixed_profile = QUIET_PROFILE
    return engine


def cost(loops: int, calls: int, repeats: int) -> dict[str, float]:
    plain, perturbed, watched, points = [], [], [], 0
    makers: tuple[Callable[[], Any], ...] = (
        lambda: None,
        quiet_perturbation,
        lambda: DataRaceWatch(quiet_perturbation(), policy="warn"),
    )
    for _ in range(repeats):  # interleaved, medians
        for samples, make in zip((plain, perturbed, watched), makers, strict=True):
            engine = make()
            samples.append(timed(loops, calls, engine))
            if isinstance(engine, SeededPerturbation):
                points = engine.stats.points
    base, pert, watch = (statistics.median(s) for s in (plain, perturbed, watched))
    return {
        "plain_s": base,
        "perturbation_s": pert,
        "watched_s": watch,
        "points": points,
        "perturbation_ns_per_point": (pert - base) / points * 1e9 if points else float("nan"),
        "watch_ns_per_point": (watch - pert) / points * 1e9 if points else float("nan"),
        "watched_over_perturbation": watch / pert if pert else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocations", type=int, default=10)
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-detection", action="store_true")
    parser.add_argument("--twin-runs", type=int, default=100)
    parser.add_argument("--twin-repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    perturb.MAX_POINTS_PER_CALL = 10**12  # measure the callbacks, not the budget that ends them
    version = ".".join(map(str, sys.version_info[:3]))
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"python {version} ({'GIL' if gil else 'free-threaded'}), {platform.machine()}, "
          f"{os.cpu_count()} cpus, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    results: dict[str, Any] = {"python": version, "gil": gil}
    if not options.skip_detection:
        found = detection(options.invocations)
        print(f"\ndetection: {options.invocations} sessions per module, 1 run, perturbation off")
        print(f"{'test':<58} {'reported':>9} {'by assertion':>13}  locations")
        for name, row in found.items():
            locations = ", ".join(sorted(row["locations"])) or "-"
            print(f"{name:<58} {row['reported']:>4}/{row['sessions']:<4} "
                  f"{row['by_assertion']:>7}/{row['sessions']:<5}  {locations}")  # fmt: skip
        results["detection"] = {
            name: {**row, "locations": sorted(row["locations"])} for name, row in found.items()
        }
    measured = cost(options.loops, options.calls, options.repeats)
    print(f"\ncost: {options.calls} calls of {options.loops} loops, median of {options.repeats}")
    for key, value in measured.items():
        print(f"  {key}: {value:.4g}")
    results["cost"] = measured
    overhead = per_run_overhead(options.twin_runs, options.twin_repeats)
    print(f"\nper run: the fixed twins (body and harness), {options.twin_runs} runs each, "
          f"perturbation on, watch off against on, {options.twin_repeats} interleaved pairs")  # fmt: skip
    for key, value in overhead.items():
        print(f"  {key}: {value:.4g}")
    results["per_run"] = overhead
    if options.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
