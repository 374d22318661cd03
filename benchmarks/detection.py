"""Detection power on the race corpus: how often, and how fast, each race is found.

For every race in ``benchmarks/races/`` and its fixed twin, over ``--seeds`` seeds, at a budget
of ``--budget`` seconds per test:

* **pytest-concurrency** (``--concurrency-budget=B --concurrency-seed=S``), the body form
  (``@pytest.mark.concurrent``) and, where the module has one, the harness form;
* the same body form **without perturbation** (``--concurrency-perturb=false``): our runner
  alone, to show what the perturbation engine adds;
* **pytest-run-parallel** on the same bodies (``--parallel-threads=4``, per-test
  ``iterations`` calibrated so that the fixed twin takes the budget), through
  ``benchmarks/run_parallel_shim.py``.

A race is *found* when its buggy test fails (the buggy tests are strict xfails, so plain
``pytest benchmarks/races`` passes exactly when every race is found and no twin fails; the
races inside third-party libraries in ``races/thirdparty/`` are measured by
``thirdparty_races.py`` and are non-strict); a *false alarm* is a fixed twin that fails. Time to
first detection is the test's call time (pytest-concurrency stops at the first failing run) or,
for pytest-run-parallel, the time of its first failing call. Then the printed reproduction line
of every race found is run again ``--replays`` times: how often it fails again, and how often at
the same run, against the chance that an unrelated seed fails at that same run.

    python benchmarks/detection.py --seeds 20 --budget 1 --readme

Each tool runs one pytest session per seed over all the corpus tests, one session at a time.
``--readme`` rewrites only the ``## Race detection`` section of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import RACES_DIR, SESSION_TIMEOUT, Session, TestResult, run_pytest

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
SECTION = "## Race detection"
LATER_SECTIONS = ("## Scaling verdicts", "## Processes and asyncio", "## Controlled scheduler")
"""Sections listed after ours in the README's contents: a new section goes before them."""
WORKERS = 4
CALIBRATION_ITERATIONS = 100

RACES: tuple[tuple[str, str], ...] = (
    ("test_lost_update_no_call.py", "lost update, no call in the window"),
    ("test_lost_update_call.py", "lost update, a call in the window"),
    ("test_check_then_act_cache.py", "check-then-act cache"),
    ("test_lazy_singleton.py", "lazy singleton"),
    ("test_bounded_buffer.py", "bounded buffer"),
    ("test_bank_withdraw.py", "check-then-withdraw (bank account)"),
    ("test_iterate_while_mutating.py", "iterate while mutating"),
    ("test_shared_generator.py", "shared generator"),
    ("test_two_dicts.py", "two dicts updated in two steps"),
    ("test_request_context.py", "module-global request context"),
    ("test_unique_ids.py", "unique-id generator"),
    ("test_sqlite_check_then_insert.py", "SQLite check-then-insert"),
)
BUGGY, FIXED = "test_buggy", "test_fixed"
HARNESS_SUFFIX = "_harness"


@dataclass(frozen=True)
class Tool:
    """One way of running the corpus."""

    name: str
    title: str
    suffix: str  # "" for the body form, "_harness" for the harness form
    plugin_args: tuple[str, ...]

    def nodeids(self) -> list[str]:
        return [nodeid for module in modules_with(self.suffix) for nodeid in twins(module, self)]


def twins(module: str, tool: Tool) -> tuple[str, str]:
    return f"{module}::{BUGGY}{tool.suffix}", f"{module}::{FIXED}{tool.suffix}"


def modules_with(suffix: str) -> list[str]:
    if not suffix:
        return [module for module, _ in RACES]
    return [
        module for module, _ in RACES if f"def {BUGGY}{suffix}(" in (RACES_DIR / module).read_text()
    ]


OUR_ARGS = ("-p", "no:run-parallel")
TOOLS = {
    tool.name: tool
    for tool in (
        Tool("concurrency", "pytest-concurrency, body", "", OUR_ARGS),
        Tool("harness", "pytest-concurrency, harness", HARNESS_SUFFIX, OUR_ARGS),
        Tool(
            "unperturbed",
            "pytest-concurrency, perturbation off",
            "",
            (*OUR_ARGS, "--concurrency-perturb=false"),
        ),
        Tool(
            "run-parallel",
            "pytest-run-parallel",
            "",
            ("-p", "no:concurrency", "-p", "run_parallel_shim", f"--parallel-threads={WORKERS}"),
        ),
    )
}


# -- the measurements -----------------------------------------------------------------------


def calibrate_run_parallel(python: str, budget: float) -> dict[str, int]:
    """Iterations per test so that pytest-run-parallel spends ``budget`` on each fixed twin."""
    tool = TOOLS["run-parallel"]
    fixed = [twins(module, tool)[1] for module in modules_with("")]
    session = run_pytest(
        python, fixed, [*tool.plugin_args, f"--iterations={CALIBRATION_ITERATIONS}"]
    )
    iterations: dict[str, int] = {}
    for module in modules_with(""):
        buggy, twin = twins(module, tool)
        result = session.results.get(twin)
        per_iteration = (result.seconds or 0.0) / CALIBRATION_ITERATIONS if result else 0.0
        count = int(budget / per_iteration) if per_iteration > 0 else CALIBRATION_ITERATIONS
        iterations[buggy] = iterations[twin] = max(1, count)
    return iterations


def measure(python: str, tool: Tool, seeds: Sequence[int], budget: float) -> dict[int, Session]:
    sessions: dict[int, Session] = {}
    env: dict[str, str] = {}
    args = list(tool.plugin_args)
    if tool.name == "run-parallel":
        env["RUN_PARALLEL_SHIM_ITERATIONS"] = json.dumps(calibrate_run_parallel(python, budget))
    else:
        args.append(f"--concurrency-budget={budget:g}")
    for seed in seeds:
        seed_args = args if tool.name == "run-parallel" else [*args, f"--concurrency-seed={seed}"]
        sessions[seed] = run_pytest(python, tool.nodeids(), seed_args, env)
        print(f"  {tool.name} seed {seed}: {sessions[seed].wall:.1f}s", file=sys.stderr)
    return sessions


@dataclass
class Replays:
    attempts: int = 0
    failed: int = 0
    by_run: int = 0  # failed at or before the run where the original failed
    original_runs: list[int] = field(default_factory=list)


def replay(
    python: str, tool: Tool, sessions: dict[int, Session], repeats: int
) -> dict[str, Replays]:
    """Run each printed reproduction line again: per nodeid, how often it fails (by the run
    where it failed first)."""
    replays: dict[str, Replays] = {}
    for seed, session in sessions.items():
        found = {
            nodeid: result
            for nodeid, result in session.results.items()
            if result.failed and result.reproduce and BUGGY in nodeid
        }
        if not found:
            continue
        for _ in range(repeats):
            # The printed line is `pytest NODEID --concurrency-seed=S`; lines sharing a seed run
            # in one session (the test seed depends on the nodeid, not on the session's tests).
            again = run_pytest(
                python, list(found), [*tool.plugin_args, f"--concurrency-seed={seed}"]
            )
            for nodeid, first in found.items():
                stats = replays.setdefault(nodeid, Replays())
                result = again.results.get(nodeid)
                stats.attempts += 1
                if first.failing_run is not None:
                    stats.original_runs.append(first.failing_run)
                if result is not None and result.failed:
                    stats.failed += 1
                    stats.by_run += (result.failing_run or 0) <= (first.failing_run or 0)
    return replays


# -- the tables -----------------------------------------------------------------------------


@dataclass
class RaceRow:
    title: str
    found: int = 0
    seeds: int = 0
    seconds: list[float] = field(default_factory=list)
    false_alarms: int = 0
    first_runs: list[int] = field(default_factory=list)
    runs_in_budget: list[int] = field(default_factory=list)


def race_rows(tool: Tool, sessions: dict[int, Session]) -> dict[str, RaceRow]:
    rows: dict[str, RaceRow] = {}
    titles = dict(RACES)
    for module in modules_with(tool.suffix):
        buggy, twin = twins(module, tool)
        row = rows[module] = RaceRow(titles[module])
        for session in sessions.values():
            bug, fix = session.results.get(buggy), session.results.get(twin)
            row.seeds += 1
            if bug is not None and bug.failed:
                row.found += 1
                if bug.seconds is not None:
                    row.seconds.append(bug.seconds)
                if bug.failing_run is not None:
                    row.first_runs.append(bug.failing_run)
            if fix is None or fix.failed:
                row.false_alarms += 1
            elif fix.runs is not None:
                row.runs_in_budget.append(fix.runs)
    return rows


def chance_by_run(first_runs: Sequence[int], originals: Sequence[int], seeds: int) -> float:
    """Chance that an unrelated seed fails by run k, averaged over the replayed k's: the share
    of all measured seeds whose first failing run is at most k."""
    if not seeds or not originals:
        return 0.0
    return statistics.mean(sum(run <= k for run in first_runs) / seeds for k in originals)


def ms(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) * 1000:.0f} / {max(values) * 1000:.0f}"


def found_cell(row: RaceRow | None) -> str:
    if row is None:
        return "n/a"
    return f"{row.found}/{row.seeds}"


def detection_table(
    rows_by_tool: dict[str, dict[str, RaceRow]], tools: Sequence[Tool]
) -> list[str]:
    header = ["race"]
    for tool in tools:
        header += [f"{tool.title}: found", "ms to find (median / max)"]
    header.append("false alarms (all)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for module, title in RACES:
        cells = [title]
        false_alarms = 0
        for tool in tools:
            row = rows_by_tool[tool.name].get(module)
            cells += [found_cell(row), ms(row.seconds) if row else "n/a"]
            false_alarms += row.false_alarms if row else 0
        cells.append(str(false_alarms))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def totals_line(rows_by_tool: dict[str, dict[str, RaceRow]], tools: Sequence[Tool]) -> list[str]:
    lines = []
    for tool in tools:
        rows = rows_by_tool[tool.name].values()
        target = sum(row.found >= 0.95 * row.seeds for row in rows)
        anywhere = sum(row.found > 0 for row in rows)
        alarms = sum(row.false_alarms for row in rows)
        lines.append(
            f"- {tool.title}: {target} of {len(rows)} races found in >= 95% of seeds, "
            f"{anywhere} found at least once, {alarms} false alarms on the twins."
        )
    return lines


def replay_table(rows: dict[str, RaceRow], replays: dict[str, Replays], tool: Tool) -> list[str]:
    lines = [
        "| race | replays failing | replays failing by the original failing run "
        "| chance that another seed fails by then |",
        "|---|---|---|---|",
    ]
    for module, title in RACES:
        buggy = twins(module, tool)[0]
        stats, row = replays.get(buggy), rows.get(module)
        if stats is None or row is None or not stats.attempts:
            continue
        lines.append(
            f"| {title} | {stats.failed}/{stats.attempts} | {stats.by_run}/{stats.attempts} "
            f"| {chance_by_run(row.first_runs, stats.original_runs, row.seeds):.0%} |"
        )
    return lines


def machine_line(python: str) -> str:
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return (
        f"Machine: {os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}), "
        f"{platform.system()} {platform.release()}, CPython {version}; "
        f"{datetime.date.today().isoformat()}."
    )


# -- the README section ---------------------------------------------------------------------


def replace_section(text: str, body: str) -> str:
    """``text`` with the ``## Race detection`` section replaced by ``body`` (or appended)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        later = [i for i, line in enumerate(lines) if line.strip() in LATER_SECTIONS]
        if not later:
            return text.rstrip("\n") + ("\n\n" if text.strip() else "") + body.rstrip("\n") + "\n"
        at = later[0]
        return "\n".join([*lines[:at], *body.rstrip("\n").splitlines(), "", *lines[at:]]) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    new = [*lines[:start], *body.rstrip("\n").splitlines(), *([""] if end < len(lines) else [])]
    return "\n".join([*new, *lines[end:]]) + "\n"


def write_readme(body: str) -> None:
    text = README.read_text() if README.exists() else "# Benchmarks\n"  # re-read just now
    README.write_text(replace_section(text, body))


# -- main -----------------------------------------------------------------------------------

OVERHEAD_HEADER = (
    "| python | ns per opcode, untraced | extra ns per decision point | extra ns per opcode of user code "
    "| shared-state loop, traced / untraced | stdlib code, traced / untraced |",
    "|---|---|---|---|---|---|",
)
ABOUT = """\
Races: `benchmarks/races/`, twelve modules, each a buggy test and its fixed twin in the body form
(`@pytest.mark.concurrent(workers=4)`, fixtures shared, checks after `concurrency.barrier()`),
six also in the harness form (`for run in concurrency.runs(): ... run(fn, workers=4)` with fresh
state per run). pytest-run-parallel runs the same body-form tests with `--parallel-threads=4`
and per-test `iterations` calibrated so that each fixed twin takes the budget
(`benchmarks/run_parallel_shim.py` names its threads and counts its iterations for the bodies).
"found" = the buggy test failed within the budget, out of the seeds; "ms to find" = its call
time (we stop at the first failing run; for pytest-run-parallel, the time of its first failing
call); "false alarms" = fixed twins that failed, all tools together. pytest-run-parallel has no
seed, so its "seeds" are repetitions. Replays: every printed reproduction line of a race found
(`pytest NODEID --concurrency-seed=S`, default run count) is run again; "by the original
failing run" means it failed at that run or earlier, and the chance is the share of all seeds
whose first failure came that early. The seed fixes every perturbation decision, not the OS's
thread scheduling, so a replay repeats the pressure, not always the exact interleaving."""
OVERHEAD_ABOUT = """\
Overhead of the perturbation engine (`python benchmarks/perturb_overhead.py`, CPU time of one
thread, a loop of user code doing attribute, subscript and call operations, profile that never
gives way, so this is the pure cost of the callbacks). A *decision point* is a shared-state
instruction of the code under test; on 3.10/3.11 every opcode of user code also pays a
`sys.settrace` opcode event, on 3.12+ the other instructions are disabled after their first
event. Code outside the roots pays one call event per frame (3.10/3.11) or one `PY_START` per
code object and series (3.12+). Bounds per call: at most `MAX_POINTS_PER_CALL` (20,000) decision
points (then 3.10/3.11 run untraced; 3.12+ pay the bare callback, no decision) and at most
`MAX_SLEEP_PER_CALL` (5 ms) of seeded sleep, so a call pays at most about 20,000 x the cost
of a point plus 5 ms; a run of the corpus twins costs 0.5 to 2 ms instead of about 0.2 ms."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--replays", type=int, default=2)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help="comma-separated: " + ", ".join(TOOLS)
    )
    parser.add_argument(
        "--versions", default="", help="other interpreters for a short summary, comma-separated"
    )
    parser.add_argument("--version-seeds", type=int, default=5)
    parser.add_argument(
        "--overhead", default="", help="interpreters to run perturb_overhead.py with"
    )
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--from-json", type=Path, help="reuse the results of an earlier --json for the tools in it"
    )
    parser.add_argument("--readme", action="store_true", help="rewrite the README section")
    return parser.parse_args(argv)


Sessions = dict[int, Session]


def sessions_to_json(sessions: Sessions) -> dict[str, Any]:
    return {
        str(seed): {nodeid: vars(result) for nodeid, result in session.results.items()}
        for seed, session in sessions.items()
    }


def sessions_from_json(data: dict[str, Any]) -> Sessions:
    return {
        int(seed): Session(
            results={nodeid: TestResult(**result) for nodeid, result in results.items()}
        )
        for seed, results in data.items()
    }


def measure_tools(
    python: str,
    tools: Sequence[Tool],
    seeds: Sequence[int],
    budget: float,
    replays: int,
    raw: dict[str, Any],
) -> None:
    """Measure every tool not already in ``raw`` (and replay the printed lines of ours)."""
    for tool in tools:
        if tool.name in raw:
            continue
        print(f"{python}: {tool.title} ...", file=sys.stderr)
        sessions = measure(python, tool, seeds, budget)
        entry: dict[str, Any] = {"sessions": sessions_to_json(sessions), "replays": {}}
        if replays and tool.name in ("concurrency", "harness"):
            entry["replays"] = {
                nodeid: vars(stats)
                for nodeid, stats in replay(python, tool, sessions, replays).items()
            }
        raw[tool.name] = entry


def overhead_line(python: str) -> str:
    done = subprocess.run(
        [python, str(HERE / "perturb_overhead.py")],
        capture_output=True, text=True, check=False, timeout=SESSION_TIMEOUT,
    )  # fmt: skip
    return done.stdout.strip() or f"| {python} | failed: {done.stderr.strip()[-200:]} |"


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    seeds = list(range(options.first_seed, options.first_seed + options.seeds))
    tools = [TOOLS[name] for name in options.tools.split(",")]
    raw: dict[str, Any] = json.loads(options.from_json.read_text()) if options.from_json else {}
    raw.setdefault("seeds", seeds)
    raw.setdefault("budget", options.budget)
    raw.setdefault("tools", {})
    raw.setdefault("versions", {})
    before = json.loads(json.dumps(raw))
    measure_tools(options.python, tools, seeds, options.budget, options.replays, raw["tools"])
    version_seeds = seeds[: options.version_seeds]
    version_tools = [TOOLS["concurrency"], TOOLS["harness"]]
    for python in filter(None, options.versions.split(",")):
        results = raw["versions"].setdefault(python, {})
        measure_tools(python, version_tools, version_seeds, options.budget, 0, results)
    if options.overhead:
        raw["overhead"] = [overhead_line(python) for python in options.overhead.split(",")]
    command = "python benchmarks/detection.py " + " ".join(argv or sys.argv[1:])
    if raw != before:
        raw.setdefault("commands", []).append(command.strip())
    if options.json:
        options.json.write_text(json.dumps(raw, indent=1, default=str))
    body = report_section(options, tools, raw)
    print(body)
    if options.readme:
        write_readme(body)
    return 0


def rows_for(tools: Sequence[Tool], raw_tools: dict[str, Any]) -> dict[str, dict[str, RaceRow]]:
    return {
        tool.name: race_rows(tool, sessions_from_json(raw_tools[tool.name]["sessions"]))
        for tool in tools
        if tool.name in raw_tools
    }


def version_table(raw_versions: dict[str, Any]) -> list[str]:
    lines = [
        "| python | seeds | body: races found in >= 95% of seeds | harness: same "
        "| false alarms | ms to find, median / max (body) |",
        "|---|---|---|---|---|---|",
    ]
    for python, results in raw_versions.items():
        tools = [TOOLS["concurrency"], TOOLS["harness"]]
        rows = rows_for(tools, results)
        body, harness = rows.get("concurrency", {}), rows.get("harness", {})
        seeds = max((row.seeds for row in body.values()), default=0)
        alarms = sum(row.false_alarms for tool_rows in rows.values() for row in tool_rows.values())
        seconds = [value for row in body.values() for value in row.seconds]
        lines.append(
            f"| {python_version(python)} | {seeds} "
            f"| {sum(row.found >= 0.95 * row.seeds for row in body.values())} of {len(body)} "
            f"| {sum(row.found >= 0.95 * row.seeds for row in harness.values())} of {len(harness)} "
            f"| {alarms} | {ms(seconds)} |"
        )
    return lines


def python_version(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True, text=True, check=False,
    ).stdout.strip() or python  # fmt: skip


def report_section(options: argparse.Namespace, tools: Sequence[Tool], raw: dict[str, Any]) -> str:
    rows_by_tool = rows_for(tools, raw["tools"])
    shown = [tool for tool in tools if tool.name in rows_by_tool]
    commands = [f"`{command}`" for command in raw.get("commands", [])]
    lines = [SECTION, "", machine_line(options.python), "", "Commands (the later ones re-measured"
             " only what the earlier had not): " + "; ".join(commands), "", ABOUT, ""]  # fmt: skip
    if raw.get("note"):
        lines += [f"Note: {raw['note']}", ""]
    lines += [
        f"Budget {raw['budget']:g} s per test, seeds {raw['seeds'][0]}..{raw['seeds'][-1]}:",
        "",
    ]
    lines += detection_table(rows_by_tool, shown)
    lines += ["", *totals_line(rows_by_tool, shown), ""]
    for tool in shown:
        replays = {
            nodeid: Replays(**stats) for nodeid, stats in raw["tools"][tool.name]["replays"].items()
        }
        if replays:
            lines += [f"Replays of the printed reproduction line ({tool.title}):", ""]
            lines += [*replay_table(rows_by_tool[tool.name], replays, tool), ""]
    if raw["versions"]:
        lines += ["The same corpus on the other interpreters (pytest-concurrency only):", ""]
        lines += [*version_table(raw["versions"]), ""]
    if raw.get("overhead"):
        lines += [OVERHEAD_ABOUT, "", *OVERHEAD_HEADER, *raw["overhead"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
