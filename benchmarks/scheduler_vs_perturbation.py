"""Runs to first detection on the race corpus: the controlled scheduler against perturbation.

For every race in ``benchmarks/races/`` (the body form, ``@pytest.mark.concurrent(workers=4,
runs=200)``; SQLite ``runs=100``) and its fixed twin, over ``--seeds`` seeds, one pytest
session per mode and seed:

* **perturbation**: the default thread mode, seeded perturbation of real threads;
* **random**: ``--concurrency-schedule=random``, one worker at a time, a uniform choice at each
  scheduling point;
* **pct d=2**, **pct d=3**: ``--concurrency-schedule=pct`` with ``--concurrency-schedule-depth``.

A race is *found* when its buggy test fails within the marker's runs; *runs to first
detection* is the failing run's index + 1 (from ``--concurrency-json``); *ms* is the test's call
time (junit). A *false alarm* is a fixed twin that failed (the twins run, all their runs, in the
first ``--twin-seeds`` sessions of each mode). Then each race's reproduction line
(from the first seed that found it) is run ``--replays`` times: how often it fails again at the
same run, and, for the controlled modes, with the same interleaving fingerprint.

    python benchmarks/scheduler_vs_perturbation.py --seeds 20 --replays 10 --readme

``--readme`` rewrites only the ``## Controlled scheduler`` section of ``benchmarks/README.md``
(re-read just before writing). Reuses the corpus list and the session runner of
``benchmarks/detection.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from detection import RACES, RACES_DIR, Session, machine_line, run_pytest  # noqa: E402

README = HERE / "README.md"
SECTION = "## Controlled scheduler"
BUGGY, FIXED = "test_buggy", "test_fixed"
ISOLATION = ("-p", "no:run-parallel", "-p", "no:randomly", "-p", "no:asyncio")
INTERLEAVING = re.compile(r"interleaving ([0-9a-f]{16})")
REPLAY_TIMEOUT = 600.0


@dataclass(frozen=True)
class Mode:
    name: str
    title: str
    args: tuple[str, ...]

    @property
    def controlled(self) -> bool:
        return any(arg.startswith("--concurrency-schedule=") for arg in self.args)


MODES = (
    Mode("perturbation", "perturbation (default)", ()),
    Mode("random", "controlled, random", ("--concurrency-schedule=random",)),
    Mode(
        "pct2",
        "controlled, PCT d=2",
        ("--concurrency-schedule=pct", "--concurrency-schedule-depth=2"),
    ),
    Mode(
        "pct3",
        "controlled, PCT d=3",
        ("--concurrency-schedule=pct", "--concurrency-schedule-depth=3"),
    ),
)


@dataclass
class RaceRow:
    found: int = 0
    seeds: int = 0
    runs_to_find: list[int] = field(default_factory=list)
    ms_to_find: list[float] = field(default_factory=list)
    false_alarms: int = 0
    twin_runs: int = 0
    twin_ms: list[float] = field(default_factory=list)  # a fixed twin's call, all its runs
    reproduce: str | None = None
    failing_run: int | None = None


@dataclass
class ReplayRow:
    attempts: int = 0
    failed: int = 0
    same_run: int = 0
    same_interleaving: int = 0


def nodeids(name: str) -> list[str]:
    return [f"{module}::{name}" for module, _ in RACES]


def measure(python: str, mode: Mode, seeds: Sequence[int], twin_seeds: int) -> dict[str, RaceRow]:
    """The buggy tests over every seed; the fixed twins (all their runs) over the first few."""
    rows = {module: RaceRow() for module, _ in RACES}
    for index, seed in enumerate(seeds):
        args = [*ISOLATION, *mode.args, f"--concurrency-seed={seed}"]
        tests = nodeids(BUGGY) + (nodeids(FIXED) if index < twin_seeds else [])
        session = run_pytest(python, tests, args)
        print(f"  {mode.name} seed {seed}: {session.wall:.1f}s", file=sys.stderr)
        account(rows, session)
    return rows


def account(rows: dict[str, RaceRow], session: Session) -> None:
    for module, row in rows.items():
        buggy = session.results.get(f"{module}::{BUGGY}")
        fixed = session.results.get(f"{module}::{FIXED}")
        row.seeds += 1
        if fixed is not None:
            row.twin_runs += 1
            row.false_alarms += fixed.failed
            row.twin_ms.append(1000 * (fixed.seconds or 0.0))
        if buggy is None or not buggy.failed or buggy.failing_run is None:
            continue
        row.found += 1
        row.runs_to_find.append(buggy.failing_run + 1)
        row.ms_to_find.append(1000 * (buggy.seconds or 0.0))
        if row.reproduce is None:
            row.reproduce, row.failing_run = buggy.reproduce, buggy.failing_run


def replay(python: str, row: RaceRow, times: int) -> ReplayRow:
    """Rerun a printed reproduction line: same failing run, same interleaving?"""
    result = ReplayRow()
    if not row.reproduce:
        return result
    first = run_reproduce(python, row.reproduce)
    for _ in range(times):
        again = run_reproduce(python, row.reproduce)
        result.attempts += 1
        result.failed += again.failing_run is not None
        result.same_run += again.failing_run is not None and again.failing_run == row.failing_run
        result.same_interleaving += (
            again.interleaving is not None and again.interleaving == first.interleaving
        )
    return result


@dataclass
class Replayed:
    failing_run: int | None
    interleaving: str | None


def run_reproduce(python: str, command: str) -> Replayed:
    report = RACES_DIR / f".replay-{os.getpid()}.json"
    argv = [
        python,
        "-m",
        *shlex.split(command),
        "--runxfail",  # the buggy tests are xfails: show their failure, with its interleaving
        *ISOLATION,
        "-p",
        "no:cacheprovider",
        f"--concurrency-json={report}",
    ]
    try:
        done = subprocess.run(
            argv, cwd=RACES_DIR, capture_output=True, text=True, timeout=REPLAY_TIMEOUT, check=False
        )
        tests = json.loads(report.read_text()).get("tests", []) if report.exists() else []
    finally:
        report.unlink(missing_ok=True)
    failing = next((t.get("failing_run") for t in tests if t.get("failing_run") is not None), None)
    match = INTERLEAVING.search(done.stdout)
    return Replayed(failing, match.group(1) if match else None)


# -- what lock tracking and the controlled scheduler cost ----------------------------------

OVERHEAD_TESTS = """
import threading
import pytest

@pytest.fixture
def lock():
    return threading.Lock()

@pytest.mark.concurrent(workers=4, runs=200)
def test_trivial():
    pass

@pytest.mark.concurrent(workers=4, runs=200)
def test_200_lock_round_trips(lock):
    for _ in range(200):
        with lock:
            pass
"""
OVERHEAD_ARMS = (
    ("lock tracking off", ("--concurrency-lock-order=off",)),
    ("lock tracking on (default)", ()),
    ("controlled, PCT", ("--concurrency-schedule=pct",)),
)


def overhead(python: str, repetitions: int) -> list[str]:
    """Call time per run of two tests, the arms interleaved, medians over the repetitions."""
    import tempfile
    import xml.etree.ElementTree as ElementTree

    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        Path(scratch, "test_overhead.py").write_text(OVERHEAD_TESTS)
        for _ in range(repetitions):
            for arm, extra in OVERHEAD_ARMS:
                junit = Path(scratch, "junit.xml")
                argv = [python, "-m", "pytest", "test_overhead.py", *ISOLATION, "-q",
                        "-p", "no:cacheprovider", "--concurrency-perturb=false", *extra,
                        f"--junitxml={junit}"]  # fmt: skip
                subprocess.run(argv, cwd=scratch, capture_output=True, check=False)
                for case in ElementTree.parse(junit).iter("testcase"):
                    key = (arm, str(case.get("name")))
                    times.setdefault(key, []).append(float(case.get("time", "0")) / 200 * 1e6)
    names = ("test_trivial", "test_200_lock_round_trips")
    lines = [
        "| arm | trivial body, us per run | 200 lock round trips, us per run |",
        "|---|---|---|",
    ]
    for arm, _ in OVERHEAD_ARMS:
        cells = [f"{statistics.median(times[(arm, name)]):.0f}" for name in names]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


# -- the README section ---------------------------------------------------------------------


def median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "-"


def runs_cell(row: RaceRow) -> str:
    if not row.runs_to_find:
        return "-"
    return f"{median(row.runs_to_find)} (max {max(row.runs_to_find)})"


def detection_table(results: dict[str, dict[str, RaceRow]]) -> list[str]:
    header = "| race | " + " | ".join(
        f"{mode.title}: found / runs to find / ms" for mode in MODES if mode.name in results
    )
    lines = [header + " |", "|---|" + "---|" * len(results)]
    for module, title in RACES:
        cells = []
        for mode in MODES:
            if mode.name not in results:
                continue
            row = results[mode.name][module]
            cells.append(f"{row.found}/{row.seeds} / {runs_cell(row)} / {median(row.ms_to_find)}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def totals(results: dict[str, dict[str, RaceRow]]) -> list[str]:
    lines = []
    for mode in MODES:
        rows = results.get(mode.name)
        if rows is None:
            continue
        found = sum(row.found for row in rows.values())
        seeds = sum(row.seeds for row in rows.values())
        runs = [r for row in rows.values() for r in row.runs_to_find]
        alarms = sum(row.false_alarms for row in rows.values())
        twins = sum(row.twin_runs for row in rows.values())
        every = sum(1 for row in rows.values() if row.found == row.seeds)
        lines.append(
            f"- **{mode.title}**: found {found} of {seeds} (race, seed) pairs; every seed found "
            f"{every} of {len(rows)} races; median runs to first detection "
            f"{median(runs)}, 90th percentile "
            f"{sorted(runs)[int(0.9 * (len(runs) - 1))] if runs else '-'}; "
            f"false alarms: {alarms} in {twins} fixed-twin tests (all their runs)."
        )
    return lines


def replay_lines(replays: dict[str, dict[str, ReplayRow]]) -> list[str]:
    lines = [
        "| mode | reproduction lines rerun | failed again | at the same run | same interleaving |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        rows = list(replays.get(mode.name, {}).values())
        if not rows:
            continue
        attempts = sum(r.attempts for r in rows)
        failed = sum(r.failed for r in rows)
        same_run = sum(r.same_run for r in rows)
        same = (
            f"{sum(r.same_interleaving for r in rows)}/{attempts}"
            if mode.controlled
            else "n/a (no interleaving to compare)"
        )
        lines.append(
            f"| {mode.title} | {attempts} | {failed}/{attempts} | {same_run}/{attempts} | {same} |"
        )
    return lines


def command_line(args: argparse.Namespace) -> str:
    return (
        f"python benchmarks/scheduler_vs_perturbation.py --seeds {args.seeds} "
        f"--first-seed {args.first_seed} --twin-seeds {args.twin_seeds} --replays {args.replays} "
        f"--overhead {args.overhead} --json results.json"
    )


def utc_now() -> str:
    """As ``date -u``, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


@dataclass(frozen=True)
class ModeScore:
    """One mode over the whole corpus: what decides the better default."""

    mode: Mode
    found: int
    pairs: int
    runs: float  # median runs to first detection
    p90: float  # 90th percentile of runs to first detection
    ms: float  # median ms to first detection
    clean_ms: float  # median over twin sessions of the twelve fixed twins' total call time
    slowest: tuple[str, float]  # the fixed twin with the largest median call time, and it

    def finder_key(self) -> tuple[int, float, float]:
        """More found first, then fewer runs at the 90th percentile (a user sets a run count),
        then less time to first detection."""
        return (-self.found, self.p90, self.ms)

    def text(self) -> str:
        return (
            f"{self.mode.title}: found {self.found}/{self.pairs}; runs to first detection median "
            f"{self.runs:.0f}, 90th percentile {self.p90:.0f}; median {self.ms:.0f} ms to first "
            f"detection; the twelve passing fixed twins (200 runs each, SQLite 100) took "
            f"{self.clean_ms / 1000:.1f} s, {self.slowest[1] / 1000:.1f} s of it in "
            f"{self.slowest[0]}"
        )


def scores(results: dict[str, dict[str, RaceRow]]) -> list[ModeScore]:
    made = []
    for mode in MODES:
        rows = results.get(mode.name)
        if not rows:
            continue
        runs = sorted(r for row in rows.values() for r in row.runs_to_find)
        ms = [m for row in rows.values() for m in row.ms_to_find]
        sessions = max((len(row.twin_ms) for row in rows.values()), default=0)
        clean = [
            sum(row.twin_ms[i] for row in rows.values() if i < len(row.twin_ms))
            for i in range(sessions)
        ]
        made.append(
            ModeScore(
                mode,
                sum(row.found for row in rows.values()),
                sum(row.seeds for row in rows.values()),
                statistics.median(runs) if runs else float("inf"),
                runs[int(0.9 * (len(runs) - 1))] if runs else float("inf"),
                statistics.median(ms) if ms else float("inf"),
                statistics.median(clean) if clean else 0.0,
                slowest_twin(rows),
            )
        )
    return made


def slowest_twin(rows: dict[str, RaceRow]) -> tuple[str, float]:
    titles = dict(RACES)
    medians = {m: statistics.median(row.twin_ms) for m, row in rows.items() if row.twin_ms}
    if not medians:
        return ("-", 0.0)
    module = max(medians, key=medians.__getitem__)
    return (titles.get(module, module), medians[module])


VERDICT_RULES = """Rules: among the controlled strategies (the user has opted in for exact replay and accepted
its cost) the better one finds more races, then needs fewer runs at the 90th percentile; the
controlled scheduler should replace perturbation as the default thread mode only if it finds
races perturbation misses, since every passing test pays its cost on every run. Most of the
controlled cost of the passing twins is SQLite's: a worker that waits in SQLite's busy handler
(C code, asleep in the kernel) while another holds the write lock keeps the token until the
scheduler detaches it (two looks 0.05 s apart), once for every hand-over that lands inside a
transaction; random may change the running worker at every decision, PCT only at its d - 1
change points and when the running worker blocks."""


def verdict(results: dict[str, dict[str, RaceRow]]) -> list[str]:
    """Which default is better, by :data:`VERDICT_RULES`."""
    scored = scores(results)
    controlled = sorted((s for s in scored if s.mode.controlled), key=ModeScore.finder_key)
    plain = [s for s in scored if not s.mode.controlled]
    lines = [VERDICT_RULES, ""]
    if controlled:
        lines.append(f'- **Strategy for `schedule="on"`: {controlled[0].mode.title}.**')
        lines.extend(f"  - {score.text()}." for score in controlled)
    if controlled and plain:
        best, perturbation = controlled[0], plain[0]
        winner = best if best.found > perturbation.found else perturbation
        lines.append(f"- **Default thread mode: {winner.mode.title}.**")
        lines.extend(f"  - {score.text()}." for score in (perturbation, best))
    return lines


def section(
    python: str,
    args: argparse.Namespace,
    results: dict[str, dict[str, RaceRow]],
    replays: dict[str, dict[str, ReplayRow]],
    wall: float,
    costs: Sequence[str] = (),
    conditions: dict[str, str] | None = None,
) -> str:
    command = (conditions or {}).get("command") or command_line(args)
    if args.from_json:
        command += f"`, then `--from-json {args.from_json.name} --readme"
    return "\n".join(
        [
            SECTION,
            "",
            ABOUT,
            "",
            f"Command: `{command}` ({wall / 60:.0f} min). {machine_line(python)}",
            *(
                [
                    "",
                    f"Started {conditions['started']} (`date -u`); load average (1, 5, 15 min) "
                    f"{conditions['load_before']} at the start, {conditions['load_after']} at "
                    f"the end; the machine was shared with other jobs.",
                ]
                if conditions and "started" in conditions
                else []
            ),
            "",
            "Found within the marker's runs, out of the seeds / median runs to first detection "
            "(max) / median ms to first detection:",
            "",
            *detection_table(results),
            "",
            DEPTH_NOTE,
            "",
            *totals(results),
            "",
            f"Replays: each race's printed reproduction line (first seed that found it), rerun "
            f"{args.replays} times. {REPLAY_TEST}",
            "",
            *replay_lines(replays),
            "",
            "Which default is better, by this measurement:",
            "",
            *verdict(results),
            "",
            *([COST_ABOUT, "", *costs, ""] if costs else []),
        ]
    )


DEPTH_NOTE = """\
PCT with d=2 cannot find "iterate while mutating", whatever the seed: the error needs the
publisher in the middle of its loop, the churning worker stopped between its `subscribe` and its
`unsubscribe` (the two together leave the size unchanged), and the publisher run again before
the `unsubscribe`. That is two priority changes, a depth-3 bug, beyond d=2's one change point; d=3
has two. Random choices need no depth, which is one reason they find every race sooner."""

REPLAY_TEST = (
    "The suite checks the same on every run: "
    "`tests/test_scheduler.py::test_a_failing_seed_replays_ten_times_with_the_same_interleaving` "
    "reruns a printed reproduction line 10 times, each in a fresh pytest process, and requires "
    "the same failing run, the same interleaving fingerprint and the same shown steps each time."
)

COST_ABOUT = """\
What it costs (`--overhead`): call time per run of a trivial body and of a body making 200 lock
round trips on a lock from a fixture, 4 workers, 200 runs, perturbation off so that only the
lock tracking (on by default in thread mode: lock-order graph and deadlock watchdog) or the
controlled scheduler is measured; arms interleaved, medians of the repetitions."""


ABOUT = """\
Issue 5's "Must show": on the race corpus of `benchmarks/races/` (twelve races, body form,
4 workers, fixtures shared), how many runs each mode needs to find each race. "Perturbation" is
the default thread mode (real threads, seeded give-ways); the controlled modes run one worker
at a time and choose who runs at each scheduling point from the seed, so a seed is one
interleaving. A controlled run is slower than a perturbed one (every scheduling point is a
hand-over between two threads), so runs and milliseconds are both shown."""


def replace_section(text: str, body: str) -> str:
    """``text`` with the ``## Controlled scheduler`` section replaced by ``body`` (or appended)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = ["", *lines[end:]] if end < len(lines) else []
    return "\n".join([*lines[:start], *body.rstrip("\n").splitlines(), *tail]) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--replays", type=int, default=10)
    parser.add_argument("--twin-seeds", type=int, default=3, help="seeds that run the twins")
    parser.add_argument("--modes", default=",".join(mode.name for mode in MODES))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--overhead", type=int, default=5, help="repetitions (0: skip)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--from-json", type=Path, help="report saved results, measure nothing")
    parser.add_argument("--readme", action="store_true", help="rewrite the README section")
    return parser.parse_args(argv)


def measure_all(
    args: argparse.Namespace, chosen: set[str], seeds: Sequence[int]
) -> tuple[dict[str, dict[str, RaceRow]], dict[str, dict[str, ReplayRow]]]:
    results: dict[str, dict[str, RaceRow]] = {}
    replays: dict[str, dict[str, ReplayRow]] = {}
    for mode in MODES:
        if mode.name in chosen:
            results[mode.name] = measure(args.python, mode, seeds, args.twin_seeds)
    for mode in MODES:
        if mode.name in chosen and args.replays:
            replays[mode.name] = {
                module: replay(args.python, row, args.replays)
                for module, row in results[mode.name].items()
            }
            print(f"  replays of {mode.name} done", file=sys.stderr)
    return results, replays


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = set(args.modes.split(","))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    started = time.perf_counter()
    conditions = {
        "started": utc_now(),
        "load_before": load_average(),
        "command": command_line(args),
    }
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        results = {
            m: {k: RaceRow(**v) for k, v in rows.items()} for m, rows in saved["results"].items()
        }
        replays = {
            m: {k: ReplayRow(**v) for k, v in rows.items()} for m, rows in saved["replays"].items()
        }
        wall = float(saved.get("wall", 0.0))
        conditions = {**conditions, **saved.get("conditions", {})}
    else:
        results, replays = measure_all(args, chosen, seeds)
        wall = time.perf_counter() - started
    costs = overhead(args.python, args.overhead) if args.overhead else []
    if args.from_json and not costs:
        costs = saved.get("costs", [])
    conditions.setdefault("load_after", load_average())
    text = section(args.python, args, results, replays, wall, costs, conditions)
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "wall": wall,
                    "conditions": conditions,
                    "costs": costs,
                    "results": {
                        m: {k: vars(v) for k, v in rows.items()} for m, rows in results.items()
                    },
                    "replays": {
                        m: {k: vars(v) for k, v in rows.items()} for m, rows in replays.items()
                    },
                },
                indent=2,
                default=str,
            )
        )
    if args.readme:
        text_now = README.read_text() if README.exists() else "# Benchmarks\n"  # re-read now
        README.write_text(replace_section(text_now, text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
