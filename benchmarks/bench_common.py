"""Pieces the benchmark scripts share: the machine's CPU model, the marker form timed
through ``pytest.main`` on a generated file (per run, with pytest's own work cancelled out),
and a loop of user code timed in worker calls of a perturbation engine (``timed_calls``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
RACES_DIR = HERE / "races"
SESSION_TIMEOUT = 900.0
XFAIL_TYPE = "pytest.xfail"
XPASS_STRICT = "[XPASS(strict)]"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class PytestMarker:
    """A marked test of ``runs`` runs, written from ``template`` (formatted with ``workers`` and
    ``runs``) and run in this process by ``pytest.main(pytest_args)``."""

    def __init__(
        self, directory: Path, workers: int, template: str, stem: str, pytest_args: Sequence[str]
    ) -> None:
        self.directory = directory
        self.workers = workers
        self.template = template
        self.stem = stem
        self.pytest_args = tuple(pytest_args)
        self.count = 0
        (directory / "pytest.ini").write_text("[pytest]\n")

    def time(self, runs: int) -> float:
        self.count += 1  # a new module each time: pytest would reuse an imported one
        test = self.directory / f"{self.stem}_{self.count}.py"
        test.write_text(self.template.format(workers=self.workers, runs=runs))
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = pytest.main([*self.pytest_args, str(test)])
        elapsed = time.perf_counter() - start
        assert code == 0, f"pytest exited with {code}"
        test.unlink()
        return elapsed

    def per_run(self, runs: int) -> float:
        """``(T(runs) - T(1)) / (runs - 1)``: start-up and pytest's own work cancel out."""
        return (self.time(runs) - self.time(1)) / (runs - 1)


# -- a pytest session over the race corpus: junit, JSON report, shim timings ---------------


@dataclass
class TestResult:
    failed: bool
    seconds: float | None  # time to the first failure (or the whole call when it passed)
    runs: int | None = None
    failing_run: int | None = None
    reproduce: str | None = None


@dataclass
class Session:
    """What one pytest session said about each of its tests."""

    results: dict[str, TestResult] = field(default_factory=dict)
    wall: float = 0.0


# -- running pytest -------------------------------------------------------------------------


def run_pytest(
    python: str,
    nodeids: Sequence[str],
    args: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path = RACES_DIR,
    timeout: float = SESSION_TIMEOUT,
) -> Session:
    """One pytest session in a subprocess: each test's result from its junit XML (buggy tests
    are strict xfails), its runs and reproduction line from the JSON report, the seconds to a
    first failure from pytest-run-parallel's shim."""
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch) / "junit.xml"
        report = Path(scratch) / "concurrency.json"
        shim = Path(scratch) / "shim.json"
        command = [
            python, "-m", "pytest", *nodeids, *args, "-q", "--no-header", "-p", "no:cacheprovider",
            "-p", "no:asyncio",  # pytest-asyncio's unset-loop-scope warning is an error here
            f"--junitxml={junit}",
        ]  # fmt: skip
        if "no:concurrency" not in args:
            command.append(f"--concurrency-json={report}")
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(HERE), full_env.get("PYTHONPATH", "")])
        )
        full_env["RUN_PARALLEL_SHIM_JSON"] = str(shim)
        started = _now()
        subprocess.run(
            command, cwd=cwd, env=full_env, timeout=timeout, check=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        session = Session(wall=_now() - started)
        session.results = parse_junit(junit)
        merge_concurrency_json(session, report)
        merge_shim_json(session, shim)
    return session


def _now() -> float:
    return time.perf_counter()


def parse_junit(path: Path) -> dict[str, TestResult]:
    results: dict[str, TestResult] = {}
    if not path.exists():
        return results
    for case in ElementTree.parse(path).iter("testcase"):
        nodeid = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        results[nodeid] = TestResult(failed=body_failed(case), seconds=float(case.get("time", "0")))
    return results


def body_failed(case: ElementTree.Element) -> bool:
    """Did the test body fail? Buggy tests are strict xfails: xfailed = found, XPASS = not."""
    for child in case:
        if child.tag in ("failure", "error"):
            return not (child.get("message") or "").startswith(XPASS_STRICT)
        if child.tag == "skipped" and child.get("type") == XFAIL_TYPE:
            return True
    return False


def merge_concurrency_json(session: Session, path: Path) -> None:
    if not path.exists():
        return
    for entry in json.loads(path.read_text()).get("tests", []):
        result = session.results.get(entry.get("nodeid", ""))
        if result is not None and entry.get("kind") == "concurrent":
            result.runs = entry.get("runs_done")
            result.failing_run = entry.get("failing_run")
            result.reproduce = entry.get("reproduce")


def merge_shim_json(session: Session, path: Path) -> None:
    if not path.exists():
        return
    for nodeid, seconds in json.loads(path.read_text())["first_failure_seconds"].items():
        result = session.results.get(nodeid)
        if result is not None and result.failed:
            result.seconds = seconds


# -- found/N: pytest sessions repeated, arms interleaved ------------------------------------


@dataclass(frozen=True)
class Case:
    """A race: its buggy test and its locked twin (node ids as junit names them)."""

    title: str
    buggy: str
    twin: str


@dataclass(frozen=True)
class Arm:
    """One way of running the same tests: the pytest arguments that differ."""

    title: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def run_parallel_arm(workers: int, iterations: int = 100) -> Arm:
    """pytest-run-parallel in our place, through ``benchmarks/run_parallel_shim.py``."""
    return Arm(
        "pytest-run-parallel",
        (
            *("-p", "no:concurrency", "-p", "run_parallel_shim"),
            f"--parallel-threads={workers}",
            f"--iterations={iterations}",
        ),
    )


@dataclass
class Counts:
    sessions: int = 0
    found: int = 0
    twin_failed: int = 0
    seconds: list[float] = field(default_factory=list)


def found_counts(
    python: str,
    cwd: Path,
    cases: Sequence[Case],
    arms: Sequence[Arm],
    repetitions: int,
    common_args: Sequence[str] = (),
) -> dict[str, dict[str, Counts]]:
    """``{arm: {case title: Counts}}`` over ``repetitions`` pytest sessions per arm, each
    session running every case's two tests; the arms interleaved (A B C, C B A, ...)."""
    nodeids = [nodeid for case in cases for nodeid in (case.buggy, case.twin)]
    counts = {arm.title: {case.title: Counts() for case in cases} for arm in arms}
    for repetition in range(repetitions):
        order = arms if repetition % 2 == 0 else list(reversed(arms))
        for arm in order:
            session = run_pytest(python, nodeids, [*common_args, *arm.args], dict(arm.env), cwd)
            for case in cases:
                tally = counts[arm.title][case.title]
                tally.sessions += 1
                bug = session.results.get(case.buggy)
                if bug is not None and bug.failed:
                    tally.found += 1
                    if bug.seconds is not None:
                        tally.seconds.append(bug.seconds)
                twin = session.results.get(case.twin)
                if twin is None or twin.failed:
                    tally.twin_failed += 1  # a twin that did not run counts as failed
            found = [case.title for case in cases if found_in(session, case.buggy)]
            print(
                f"  {repetition + 1}/{repetitions} {arm.title}: {session.wall:.1f}s, "
                f"found: {', '.join(found) or 'none'}",
                file=sys.stderr,
            )
    return counts


def found_in(session: Any, nodeid: str) -> bool:
    result = session.results.get(nodeid)
    return result is not None and result.failed


def found_table(counts: dict[str, dict[str, Counts]], cases: Sequence[Case]) -> list[str]:
    """Markdown: per case, found/N (median ms to find) in each arm, and the twins' failures."""
    arms = list(counts)
    header = [
        "race",
        *(f"{arm}: found (ms to find, median)" for arm in arms),
        "twin failed, all arms",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        cells = [case.title]
        for arm in arms:
            tally = counts[arm][case.title]
            ms = f" ({statistics.median(tally.seconds) * 1000:.0f})" if tally.seconds else ""
            cells.append(f"{tally.found}/{tally.sessions}{ms}")
        failed = sum(counts[arm][case.title].twin_failed for arm in arms)
        sessions = sum(counts[arm][case.title].sessions for arm in arms)
        cells.append(f"{failed}/{sessions}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def now_line() -> str:
    """``date`` and the load average, for a section's record."""
    load = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{time.strftime('%a %b %d %H:%M:%S %Z %Y')}, load average {load}"


# -- a loop of user code, timed in worker calls of an engine ------------------------------


class Ledger:
    """The user code of the per-point cost benchmarks: attribute loads and stores, a
    subscript, a call (this folder is their code under test)."""

    def __init__(self) -> None:
        self.total = 0
        self.entries = [0] * 8

    def post(self, amount: int) -> None:
        self.total = self.total + amount
        self.entries[amount % 8] += amount


def user_loop(loops: int) -> None:
    ledger = Ledger()
    for amount in range(loops):
        ledger.post(amount)


def timed_calls(
    function: Callable[[int], None],
    loops: int,
    engine: Any,
    *,
    calls: int = 1,
    after_call: Callable[[int], object] | None = None,
) -> float:
    """Thread CPU seconds of ``calls`` calls of ``function(loops)``: untraced when ``engine``
    is None, else each one a worker call of the engine's one series (call ``run``, run seed
    ``run + 1``); ``after_call(run)`` is what the runner asks at a run's end."""
    if engine is None:
        start = time.thread_time()
        for _ in range(calls):
            function(loops)
        return time.thread_time() - start
    engine.series_started()
    try:
        elapsed = 0.0
        for run in range(calls):
            engine.call_started(0, run, run + 1)
            start = time.thread_time()
            try:
                function(loops)
            finally:
                elapsed += time.thread_time() - start
                engine.call_finished()
                if after_call is not None:
                    after_call(run)
    finally:
        engine.series_finished()
    return elapsed
