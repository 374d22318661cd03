"""Text and JSON for concurrent tests: the failure report, the summary and the JSON document.

Pure module (no pytest import). Entries are plain JSON-able dicts so they can travel from
pytest-xdist workers to the controller inside test reports and be merged there.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from pytest_concurrency import messages
from pytest_concurrency.engine.aiorun import write_keys as write_loop_keys
from pytest_concurrency.engine.audit import raised_inside_plugin
from pytest_concurrency.engine.crashes import crash_summary_lines
from pytest_concurrency.engine.dataraces import ordered as ordered_races
from pytest_concurrency.engine.entries import (
    KIND_CONCURRENT,
    KIND_SCALING,
    KIND_SERIAL,
    ConcurrentEntry,
    Entry,
    ScalingEntry,
    SerialEntry,
    concurrent_entries,
    kind_of,
    scaling_entries,
    serial_entries,
)
from pytest_concurrency.engine.modes import MODES
from pytest_concurrency.engine.outcomes import (
    FailureGroup,
    RunRecord,
    SeriesOutcome,
    call_failures,
    exception_text,
    group_failures,
)
from pytest_concurrency.engine.outputs import write_atomically
from pytest_concurrency.engine.settings import DEFAULT_RUNS, FIELDS, SESSION_FIELDS, Settings

JSON_VERSION = 1
MAX_LISTED_WORKERS = 12
MAX_OBSERVATIONS = 20

HEADLINE_RACE = "RACE DETECTED in run {run} {of} ({where}): {failed} of {calls} calls failed"
HEADLINE_EVERY_CALL = "FAILED in run {run} {of} ({where}): {failed} of {calls} calls failed"
HEADLINE_HANG = "HANG in run {run} {of} ({where}): {hung} did not finish within {timeout}s"
REPRODUCE = "reproduce: {command}"


REPLAY_RUNS_OPTION = SESSION_FIELDS["replay_runs"].option
REPLAYED_FIELDS = tuple(name for name in FIELDS if name not in ("seed", "budget"))
"""Settings a reproduction line carries when the session set them; the seed is written apart
and a budget becomes the run count that reaches the failing run (:func:`reproduce_for`)."""


def reproduce_command(nodeid: str, session_seed: int, extra: Sequence[str] = ()) -> str:
    """``pytest NODEID --concurrency-seed=N [options]``, every part quoted for the shell."""
    parts = ["pytest", nodeid, f"--concurrency-seed={session_seed}", *extra]
    return " ".join(shlex.quote(part) for part in parts)


def spell(value: object) -> str:
    """A setting's value as the command line takes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    return str(value)


def replay_options(
    session: Settings,
    *,
    workers: int,
    run_all: bool,
    replay_runs: int | None,
    given: Collection[str] = (),
) -> tuple[str, ...]:
    """What a reproduction line needs beside the seed to make the same runs again: each
    setting the session took from the command line, the environment or the ini file
    (``given``), or that is not its default (a marker's own settings replay themselves: the
    marker is in the code). A given default counts: it may override the ini file. ``workers``
    is the count this test came to, so that "auto" replays on another machine."""
    default = Settings()
    options = []
    for name in REPLAYED_FIELDS:
        value = getattr(session, name)
        if value == getattr(default, name) and name not in given:
            continue
        if name == "workers":
            value = workers
        if value is None and name == "start_method":
            value = "auto"  # given: it may override a start method in the ini file
        if value is not None:
            options.append(f"{FIELDS[name].option}={spell(value)}")
    if run_all:
        options.append(SESSION_FIELDS["run_all"].option)
    if replay_runs is not None:
        options.append(f"{REPLAY_RUNS_OPTION}={replay_runs}")
    return tuple(options)


def reproduce_for(outcome: SeriesOutcome, command: str, run: int | None = None) -> str:
    """The reproduction line of this outcome: a budget hunt (no planned count) is replayed as
    a count of runs that reaches its failing run (``run``, or the outcome's), whatever budget
    the marker or the code gives; never fewer than the default count, since in thread and
    process mode the seed steers the perturbation, not the OS, and a race that failed early
    needs more than one chance (a replay stops at its first failure, so more costs nothing
    where the replay is exact)."""
    if run is None and outcome.failing_run is not None:
        run = outcome.failing_run.index
    if outcome.runs_planned is None and run is not None:
        return f"{command} {REPLAY_RUNS_OPTION}={max(run + 1, DEFAULT_RUNS)}"
    return command


def run_position(outcome: SeriesOutcome, run: int) -> str:
    if outcome.budget is not None and outcome.runs_planned is None:
        return f"of a {outcome.budget:g}s budget"
    if outcome.runs_planned is None:  # an audit's first run: its allowance not settled yet
        return messages.RUN_POSITION_AUDIT
    return f"of {outcome.runs_planned}"


def where(outcome: SeriesOutcome, seed: int) -> str:
    known = MODES.get(outcome.mode)
    unit = known.unit if known else outcome.mode
    return f"{outcome.workers} {unit}, seed {seed}"


def headline(outcome: SeriesOutcome, record: RunRecord, timeout: float, seed: int) -> str:
    of = run_position(outcome, record.index)
    place = where(outcome, seed)
    if record.hung_workers and not record.failures:
        hung = ", ".join(f"worker {index}" for index in record.hung_workers)
        waited = timeout if record.hung_after is None else record.hung_after
        return HEADLINE_HANG.format(
            run=record.index, of=of, where=place, hung=hung, timeout=seconds_text(waited)
        )
    failed = len(call_failures(record.failures))
    if not failed and record.data_races:
        return messages.HEADLINE_DATA_RACE.format(
            run=record.index, of=of, where=place, count=len(record.data_races)
        )
    every_call = record.index == 0 and failed == record.workers
    internal = any(raised_inside_plugin(failure.exception) for failure in record.failures)
    template = HEADLINE_EVERY_CALL if every_call or internal else HEADLINE_RACE
    return template.format(run=record.index, of=of, where=place, failed=failed, calls=outcome.calls)


def seconds_text(seconds: float) -> str:
    """Seconds to two decimals at most: 120, 4, 0.97."""
    return f"{seconds:.2f}".rstrip("0").rstrip(".")


def describe_workers(group: FailureGroup) -> str:
    workers = group.workers
    listed = ", ".join(str(worker) for worker in workers[:MAX_LISTED_WORKERS])
    if len(workers) > MAX_LISTED_WORKERS:
        listed += f", ... ({len(workers)} workers)"
    noun = "call" if group.count == 1 else "calls"
    label = "worker" if len(workers) == 1 else "workers"
    return f"{group.count} {noun}: {label} {listed}"


def group_lines(groups: Iterable[FailureGroup]) -> list[str]:
    lines = []
    for group in groups:
        lines.append(f"  {group.origin.describe()} ({describe_workers(group)})")
        if group.first.message:
            lines.append(f"    {group.first.message}")
    return lines


def collateral_lines(record: RunRecord) -> list[str]:
    """The calls that gave up at the barrier because of the failures above, counted apart."""
    if not record.collateral:
        return []
    workers = sorted(failure.worker for failure in record.collateral)
    listed = ", ".join(str(worker) for worker in workers[:MAX_LISTED_WORKERS])
    if len(workers) > MAX_LISTED_WORKERS:
        listed += ", ..."
    count = len(workers)
    return [
        messages.COLLATERAL_LINE.format(
            count=count,
            calls="call" if count == 1 else "calls",
            it="it" if len(record.failures) == 1 else "them",
            workers=("worker " if count == 1 else "workers ") + listed,
        )
    ]


def observation_lines(outcome: SeriesOutcome) -> list[str]:
    if not outcome.observations:
        return []
    common = outcome.observations.most_common()
    lines = ["  observed outcomes (value: count):"]
    lines.extend(f"    {value}: {count}" for value, count in common[:MAX_OBSERVATIONS])
    if len(common) > MAX_OBSERVATIONS:
        lines.append(f"    ... and {len(common) - MAX_OBSERVATIONS} more")
    return lines


def hang_lines(record: RunRecord) -> list[str]:
    lines = []
    for worker, stack in sorted(record.stacks.items()):
        lines.append(f"  worker {worker} is stuck here:")
        lines.extend("    " + line for line in stack.rstrip().splitlines())
    return lines


def failure_report(
    outcome: SeriesOutcome, *, timeout: float, reproduce: str, seed: int
) -> list[str]:
    """The lines that close a failed concurrent test, ending with the reproduction line.

    ``seed`` is the one the reproduction line passes (the session's, or the marker's own).
    """
    record = outcome.failing_run
    if record is None:
        return []
    lines = [headline(outcome, record, timeout, seed)]
    lines.extend(group_lines(group_failures(call_failures(record.failures))))
    lines.extend(collateral_lines(record))
    lines.extend(hang_lines(record))
    lines.extend(record.notes)
    lines.extend(observation_lines(outcome))
    lines.append("  " + REPRODUCE.format(command=reproduce_for(outcome, reproduce)))
    return lines


# -- entries: one JSON-able dict per test, carried by the test report ------------------------


def concurrent_entry(
    outcome: SeriesOutcome,
    *,
    nodeid: str,
    reproduce: str | None,
    shard: tuple[int, int] | None = None,
) -> ConcurrentEntry:
    record = outcome.failing_run
    groups = group_failures(call_failures(record.failures)) if record else []
    entry: ConcurrentEntry = {
        "kind": KIND_CONCURRENT,
        "nodeid": nodeid,
        "mode": outcome.mode,
        "workers": outcome.workers,
        "runs_planned": outcome.runs_planned,
        "budget": outcome.budget,
        "runs_done": outcome.runs_done,
        "calls": outcome.calls,
        "seed": outcome.seed,
        "failing_run": record.index if record else None,
        "failing_run_seed": record.seed if record else None,
        "hung_workers": list(record.hung_workers) if record else [],
        "collateral_workers": sorted(f.worker for f in record.collateral) if record else [],
        "failures": [
            {
                "origin": group.origin.describe(),
                "exception": group.origin.exc_type,
                "file": group.origin.filename,
                "line": group.origin.lineno,
                "count": group.count,
                "workers": group.workers,
                "runs": group.runs,
                "message": group.first.message,
            }
            for group in groups
        ],
        "observations": dict(outcome.observations.most_common()),
        "reproduce": reproduce_for(outcome, reproduce) if reproduce is not None else None,
        "interrupted": describe_interrupt(outcome.interrupt),
        "data_races": [race.entry() for race in ordered_races(outcome.data_races)],
    }
    known = MODES.get(outcome.mode)
    if known is not None and known.runs_coroutines:
        write_loop_keys(entry, outcome.clock, record.loop if record else None)
    if shard is not None:
        entry["shard"], entry["shards"] = shard
        entry["base_nodeid"] = nodeid.rsplit("[", 1)[0] if "[" in nodeid else nodeid
    return entry


def describe_interrupt(exc: BaseException | None) -> str | None:
    """What cut a series short, in one line: "Failed: Timeout (>1.0s) from pytest-timeout"."""
    if exc is None:
        return None
    text = exception_text(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def serial_entry(nodeid: str, reason: str) -> SerialEntry:
    return {"kind": KIND_SERIAL, "nodeid": nodeid, "reason": reason}


# -- terminal summary ---------------------------------------------------------------------


def summary_lines(entries: Sequence[Entry]) -> list[str]:
    concurrent = concurrent_entries(entries)
    serial = serial_entries(entries)
    lines: list[str] = []
    if concurrent:
        failed = [e for e in concurrent if e.get("failing_run") is not None]
        crashed = [e for e in concurrent if e.get("crashed")]
        cut = [e for e in concurrent if e.get("interrupted") and e.get("failing_run") is None]
        runs = sum(int(e.get("runs_done") or 0) for e in concurrent)
        calls = sum(int(e.get("calls") or 0) for e in concurrent)
        lines.append(
            f"{len(concurrent)} concurrent tests, {runs} runs, {calls} calls; "
            f"{len(failed) + len(crashed)} with failures"
            + (f", {len(crashed)} crashed" if crashed else "")
            + (f", {len(cut)} interrupted" if cut else "")
        )
        lines.extend(crash_summary_lines(crashed))
        for entry in failed:
            lines.append(
                f"  {entry['nodeid']}: failed in run {entry['failing_run']} "
                f"({entry['mode']}, {entry['workers']} workers)"
            )
            for failure in entry.get("failures", []):
                lines.append(f"    {failure['origin']} x{failure['count']}")
            if not any(entry.get(key) for key in ("failures", "hung_workers", "data_races")):
                lines.append("    the check after the run failed")
            if entry.get("reproduce"):
                lines.append(f"    reproduce: {entry['reproduce']}")
        for entry in cut:
            lines.append(messages.INTERRUPTED_SUMMARY.format(**entry))
    lines.extend(shard_lines(concurrent))
    lines.extend(schedule_lines(concurrent))
    lines.extend(data_race_summary(concurrent))
    lines.extend(gil_lines(concurrent))
    if serial:
        lines.append(f"{len(serial)} tests ran once, not concurrently:")
        by_reason: dict[str, list[str]] = {}
        for once in serial:
            by_reason.setdefault(once["reason"], []).append(once["nodeid"])
        for reason, nodeids in sorted(by_reason.items(), key=lambda item: -len(item[1])):
            lines.append(
                f"  {len(nodeids)} {reason}: {', '.join(nodeids[:5])}"
                + (" ..." if len(nodeids) > 5 else "")
            )
    return lines


MAX_SCHEDULE_LINES = 20
MAX_SUMMARY_LOCATIONS = 4


def data_race_summary(concurrent: Sequence[ConcurrentEntry]) -> list[str]:
    """One line per test with data races: how many, whether they failed it, where."""
    lines = []
    for entry in concurrent:
        races = entry.get("data_races") or []
        if not races:
            continue
        locations = list(dict.fromkeys(f"{race['location']} ({race['kind']})" for race in races))
        shown = ", ".join(locations[:MAX_SUMMARY_LOCATIONS])
        if len(locations) > MAX_SUMMARY_LOCATIONS:
            shown += ", ..."
        failed = entry.get("failing_run") is not None
        lines.append(
            messages.DATA_RACE_SUMMARY.format(
                nodeid=entry["nodeid"],
                count=len(races),
                outcome="failed" if failed else "reported",
                locations=shown,
            )
        )
    return lines


def schedule_lines(concurrent: Sequence[ConcurrentEntry]) -> list[str]:
    """What each controlled-schedule test states (PCT: n, k, d, m and the bound on a miss),
    and each test's lock-order inversions."""
    lines = []
    for entry in concurrent:
        schedule = entry.get("schedule")
        if schedule:
            lines.append(schedule_line(str(entry["nodeid"]), schedule, entry.get("failing_run")))
        inversions = (entry.get("lock_order") or {}).get("inversions") or []
        if inversions:
            lines.append(
                messages.INVERSION_SUMMARY.format(
                    nodeid=entry["nodeid"],
                    count=len(inversions),
                    outcome=entry["lock_order"].get("verdict"),
                )
            )
    if len(lines) > MAX_SCHEDULE_LINES:
        hidden = len(lines) - MAX_SCHEDULE_LINES
        lines = [*lines[:MAX_SCHEDULE_LINES], f"... and {hidden} more (see --concurrency-json)"]
    return lines


def schedule_line(nodeid: str, schedule: Mapping[str, Any], failing_run: Any = None) -> str:
    if failing_run is not None:
        return messages.SCHEDULE_FOUND.format(
            strategy=schedule.get("strategy"), nodeid=nodeid, run=failing_run
        )
    guarantee = schedule.get("guarantee")
    if guarantee:
        return messages.SCHEDULE_SUMMARY_PCT.format(
            nodeid=nodeid, inverse=1 / guarantee["run_probability"], **guarantee
        )
    why = (
        messages.SCHEDULE_NO_BOUND_PCT
        if schedule.get("strategy") == "pct"
        else messages.SCHEDULE_NO_BOUND_RANDOM
    )
    return messages.SCHEDULE_SUMMARY_NO_BOUND.format(
        strategy=schedule.get("strategy"),
        nodeid=nodeid,
        runs=schedule.get("runs"),
        points=schedule.get("max_points"),
        decisions=schedule.get("max_decisions"),
        why=why,
    )


def shard_lines(concurrent: Sequence[ConcurrentEntry]) -> list[str]:
    """One line per sharded test: how its shards did together."""
    by_test: dict[str, list[ConcurrentEntry]] = {}
    for entry in concurrent:
        if "shards" in entry:
            by_test.setdefault(str(entry["base_nodeid"]), []).append(entry)
    lines = []
    for base, shards in sorted(by_test.items()):
        runs = sum(int(e.get("runs_done") or 0) for e in shards)
        failed = [e for e in shards if e.get("failing_run") is not None]
        verdict = (
            "no failure"
            if not failed
            else "failed in "
            + ", ".join(
                f"shard {e['shard']} (run {e['failing_run']}, seed {e['seed']})" for e in failed
            )
        )
        lines.append(
            f"sharded {base}: {len(shards)} of {shards[0]['shards']} shards, {runs} runs; {verdict}"
        )
    return lines


JUNIT_PREFIX = "concurrency_"
VERDICT_CRASHED = "crashed"
VERDICT_HUNG = "hung"
VERDICT_RACE = "race"
VERDICT_CHECK_FAILED = "check failed"
VERDICT_CLEAN = "no failure"
VERDICT_INTERRUPTED = "interrupted"


def concurrent_verdict(entry: ConcurrentEntry) -> str:
    """One word for a concurrent test's JUnit ``verdict`` property."""
    if entry.get("crashed"):
        return VERDICT_CRASHED
    if entry.get("hung_workers"):
        return VERDICT_HUNG
    if entry.get("failures"):
        return VERDICT_RACE
    if entry.get("failing_run") is not None:
        return VERDICT_CHECK_FAILED
    if entry.get("interrupted"):
        return VERDICT_INTERRUPTED
    return VERDICT_CLEAN


def gil_lines(concurrent: Sequence[ConcurrentEntry]) -> list[str]:
    """The concurrent tests during which the GIL came back (free-threaded builds)."""
    from pytest_concurrency.engine.gilstate import returned_in

    returns = [back for back in map(returned_in, concurrent) if back is not None]
    return [back.describe() for back in returns]


def junit_properties(any_entry: Entry) -> list[tuple[str, object]]:
    """Properties for a test's JUnit XML ``<testcase>`` (``--junitxml``), from its entry."""
    values: dict[str, object]
    if kind_of(any_entry) == KIND_CONCURRENT:
        entry = cast(ConcurrentEntry, any_entry)
        values = {
            "mode": entry["mode"],
            "workers": entry["workers"],
            "runs": entry["runs_done"],
            "seed": entry["seed"],
            "failures": sum(group["count"] for group in entry.get("failures", ())),
            "verdict": concurrent_verdict(entry),
        }
        if entry.get("shard") is not None:
            values["shard"] = f"{entry['shard']} of {entry['shards']}"
        if entry.get("gil_reenabled"):
            values["gil_reenabled"] = ",".join(entry.get("gil_modules", ())) or "unknown module"
    elif kind_of(any_entry) == KIND_SCALING:
        scaling = cast(ScalingEntry, any_entry)
        judged = scaling.get("judged_workers") or {}
        rounds = sum(level.get("rounds", 0) for level in scaling.get("levels", ()))
        values = {
            "mode": ",".join(judged) or "scaling",
            "workers": max(judged.values(), default=0),
            "runs": rounds,
            "seed": scaling.get("seed"),
            "failures": 0,
            "verdict": scaling.get("verdict"),
        }
    else:
        return []
    return [(JUNIT_PREFIX + name, value) for name, value in values.items()]


def json_document(header: Mapping[str, Any], entries: Sequence[Entry]) -> dict[str, Any]:
    ordered = sorted(entries, key=lambda entry: str(entry.get("nodeid")))
    return {
        "version": JSON_VERSION,
        **header,
        "tests": concurrent_entries(ordered),
        "serial": serial_entries(ordered),
        "scaling": scaling_entries(ordered),
    }


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write the report atomically; raises :class:`OSError` (a special file at ``path`` is
    left alone, and no temporary file is left behind)."""
    text = json.dumps(document, indent=2, sort_keys=False, default=str) + "\n"
    write_atomically(path, text.encode("utf-8"))
