"""Every printed reproduction line replays its race (issue 14, "Must show").

For a matrix of real races (a lost update ``self.hits += 1``, a check-then-act on a dict, a dict
iterated while others change it, check-then-act and lost updates across an ``await``,
read-modify-write of a file shared by worker processes), in each mode (threads, processes,
asyncio), each form (marker, harness, run-all, shards) and each source of the settings that
shape the run (the marker or the harness's own arguments, the command line, a
``PYTEST_CONCURRENCY_*`` environment variable, a ``concurrency_*`` ini key), plus the controlled
scheduler and budget hunts:

1. the test is written into a fresh directory (with the race's code, copied from
   ``benchmarks/races/`` or ``examples/`` where one fits) and pytest runs once in a fresh
   interpreter, ``pytest test_race.py -p no:randomly -p no:cacheprovider`` with the setting's
   source (options, environment, ini file); if the race is not found, up to three more first
   runs with new seeds;
2. the printed line ``reproduce: pytest NODEID --concurrency-seed=N [options]`` is taken as a
   user copies it; the environment variables are dropped and the ini file loses its
   ``concurrency_*`` keys (a fresh shell, a checkout that does not set them);
3. ``shlex.split(line)`` is run as printed, ``--replays`` times (5), each in a fresh
   interpreter from the same directory, with the venv's ``bin`` first on ``PATH``; a replay
   counts when it fails with the first run's origin (``Type at file:line``: the plugin's first
   origin, or pytest's own location for a check after a harness run).

The bar is the issue's: 5 of 5 in asyncio mode and under the controlled scheduler, at least 4 of
5 in thread and process mode. The script also checks that the line carries each setting that
did not come from the test's code (``carries``). Exit status 1 if any case is below the bar or
its line lacks a setting.

    .venv/bin/python benchmarks/replay_lines.py                 # 33 cases, about 3 minutes here
    .venv/bin/python benchmarks/replay_lines.py --cases budget  # names containing "budget"

Cases run one after another (timing races on a 2-core machine must not compete with each
other). Run with the venv's interpreter: the replays call ``pytest`` from its ``bin``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template

from pytest_concurrency.engine.settings import Settings as PluginSettings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_common import cpu_model  # noqa: E402

FIRST_RUN_ARGS = ("-p", "no:randomly", "-p", "no:cacheprovider")
FIRST_TRIES = 4  # the first run, and up to three more with new seeds
TIMEOUT = 300.0
ENV_PREFIX = "PYTEST_CONCURRENCY_"
TEST_FILE = "test_race.py"
SESSION_SETTINGS = ("all", "shards")  # not marker keys: from the command line when "marker"

# -- the races ------------------------------------------------------------------------------

HELPERS: dict[str, str | Path] = {
    # copied from the race corpus and the examples: their buggy classes, imported by the tests
    "race_lost_update.py": ROOT / "benchmarks" / "races" / "test_lost_update_no_call.py",
    "race_cache.py": ROOT / "benchmarks" / "races" / "test_check_then_act_cache.py",
    "race_bus.py": ROOT / "benchmarks" / "races" / "test_iterate_while_mutating.py",
    "race_aio.py": ROOT / "examples" / "test_asyncio_races.py",
    "race_file.py": '''
        """Read-modify-write of a file shared by worker processes (as in tests/test_processes.py)."""

        from pathlib import Path


        def increment(path):
            text = Path(path).read_text() if Path(path).exists() else ""
            value = int(text or 0)  # read ...
            Path(path).write_text(str(value + 1))  # ... add, write back: another process may interleave


        def append_line(path, line):
            text = Path(path).read_text() if Path(path).exists() else ""  # read ...
            Path(path).write_text(text + line + "\\n")  # ... write back what was read, plus ours
    ''',
    "race_store.py": '''
        """A store written back across an await: read, await the network, write what was read."""

        import asyncio

        STORE = {"items": []}


        async def save(item):
            items = list(STORE["items"])  # read ...
            await asyncio.sleep(0)  # ... the write goes over the network ...
            STORE["items"] = items + [item]  # ... and puts back what was read, plus ours
    ''',
}

# Templates: $marker is the decorator line (empty in run-all), $runs the arguments of
# concurrency.runs(...), $workers ", workers=K" or "" for run(fn, ...).
RACES: dict[str, tuple[str, str]] = {
    "lost-update": (
        "lost update `self.hits += 1` (races/test_lost_update_no_call.py)",
        """
        import pytest
        from race_lost_update import Counter, increment_and_check


        @pytest.fixture
        def counter():
            return Counter()


        $marker
        def test_hits_are_counted(counter, concurrency):
            increment_and_check(counter, concurrency)
        """,
    ),
    "cache-body": (
        "check-then-act on a dict, shared cache (races/test_check_then_act_cache.py)",
        """
        import pytest
        from race_cache import Cache, Connection, get_and_check


        @pytest.fixture
        def cache():
            return Cache(Connection)


        $marker
        def test_one_connection_per_key(cache, concurrency):
            get_and_check(cache, concurrency)
        """,
    ),
    "cache-harness": (
        "check-then-act on a dict, fresh cache per run (races/test_check_then_act_cache.py)",
        """
        from functools import partial

        from race_cache import Cache, Connection


        def test_one_connection_per_key(concurrency):
            for run in concurrency.runs($runs):
                cache = Cache(Connection)
                got = run(partial(cache.get_or_create, "db")$workers)
                assert len(set(map(id, got))) == 1, "two connections for one key"
        """,
    ),
    "bus": (
        "dict iterated while others subscribe (races/test_iterate_while_mutating.py)",
        """
        import threading

        from race_bus import EventBus

        BUS = EventBus()


        def test_publish_reaches_the_subscriber():
            name = f"subscriber-{threading.get_ident()}"
            got = []
            BUS.subscribe(name, got.append)
            BUS.publish("hello")
            BUS.unsubscribe(name)
            assert "hello" in got
        """,
    ),
    "file-counter": (
        "processes: read-add-write of a shared file",
        """
        import pytest
        from race_file import increment


        $marker
        def test_counter_file(tmp_path, concurrency):
            path = tmp_path / f"counter-{concurrency.run}"
            increment(path)
            concurrency.barrier()  # every process of this run has incremented
            assert int(path.read_text()) == concurrency.workers, "an increment was lost"
        """,
    ),
    "file-counter-harness": (
        "processes: read-add-write of a shared file, reset per run",
        """
        from functools import partial

        from race_file import increment


        def test_counter_file(concurrency, tmp_path):
            path = tmp_path / "counter"
            for run in concurrency.runs($runs):
                path.write_text("0")
                done = run(partial(increment, path)$workers)
                assert int(path.read_text()) == len(done), "an increment was lost"
        """,
    ),
    "journal": (
        "processes: lines appended to a shared file by read-modify-write (plain test)",
        """
        import os
        import threading
        import uuid

        from race_file import append_line


        def test_journal_keeps_my_line(tmp_path):
            path = tmp_path / "journal.txt"
            me = f"{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex}"
            append_line(path, me)
            assert me in path.read_text().split(), "my line was lost"
        """,
    ),
    "price-cache": (
        "asyncio: check-then-act across an await, requests a loop step apart (examples/test_asyncio_races.py)",
        """
        import asyncio

        import pytest
        from race_aio import PriceCache, PriceService


        @pytest.fixture
        def cache():
            return PriceCache(PriceService())


        $marker
        async def test_fetched_once(cache, concurrency):
            for _ in range(concurrency.worker):  # the requests arrive one loop step apart
                await asyncio.sleep(0)
            await cache.get(f"sku-{concurrency.run}")
            await concurrency.barrier()
            assert cache.service.requests == len(cache.prices), "fetched twice"
        """,
    ),
    "wallet": (
        "asyncio: balance checked, payment awaited, then debited (examples/test_asyncio_races.py)",
        """
        import asyncio
        import itertools
        from functools import partial

        from race_aio import PaymentProvider, Wallet


        async def purchase(wallet, arrivals):
            for _ in range(next(arrivals)):  # the purchases arrive one loop step apart
                await asyncio.sleep(0)
            return await wallet.pay(60)


        async def test_never_overdrawn(concurrency):
            for run in concurrency.runs($runs):
                wallet = Wallet(100, PaymentProvider())
                paid = await run(partial(purchase, wallet, itertools.count())$workers)
                assert paid.count(True) == 1, "paid twice from one balance"
        """,
    ),
    "store": (
        "asyncio: lost update across an await (plain async test)",
        """
        import asyncio
        import itertools

        import race_store

        ARRIVALS = itertools.count()


        async def test_saved_item_is_kept():
            for _ in range(next(ARRIVALS) % 3):  # the requests arrive a loop step apart
                await asyncio.sleep(0)
            me = object()
            await race_store.save(me)
            await asyncio.sleep(0)  # read it back: another round trip
            assert me in race_store.STORE["items"], "my item was lost"
        """,
    ),
}

# -- the cases ------------------------------------------------------------------------------

Given = tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class Case:
    name: str
    race: str
    mode: str
    form: str  # marker, harness, run-all, shards
    source: str  # marker (or the harness's arguments), cli, env, ini
    settings: Given  # given by the source
    note: str = ""  # "scheduler", "budget"
    xdist: bool = False  # the first run under pytest-xdist, -n 2

    @property
    def strict(self) -> bool:
        """Every replay must fail: asyncio mode and the controlled scheduler (one seed, one
        interleaving); thread and process mode may miss one in five."""
        return self.mode == "asyncio" or dict(self.settings).get("schedule", "off") != "off"

    def bar(self, replays: int) -> int:
        return replays if self.strict else math.ceil(0.8 * replays)

    def setting(self, name: str) -> object | None:
        return dict(self.settings).get(name)


def case(race: str, mode: str, form: str, source: str, note: str = "", /, **kw: object) -> Case:
    """A case; ``kw`` are the settings its source gives (``xdist=True``: the first run under
    ``-n 2``)."""
    xdist = bool(kw.pop("xdist", False))
    name = "-".join(filter(None, [mode, form, source, note]))
    return Case(name, race, mode, form, source, tuple(kw.items()), note, xdist)


# fmt: off
CASES: tuple[Case, ...] = (
    # threads
    case("lost-update", "threads", "marker", "marker", workers=3, runs=150),
    case("lost-update", "threads", "marker", "env", workers=3, runs=150, timeout=30),
    case("cache-harness", "threads", "harness", "cli", workers=3, runs=150),
    case("cache-harness", "threads", "harness", "ini", workers=3, runs=150),
    case("bus", "threads", "run-all", "env", all=True, workers=3),
    case("bus", "threads", "run-all", "cli", all=True, runs=150),
    case("lost-update", "threads", "shards", "ini", shards=2, runs=150),
    case("lost-update", "threads", "shards", "marker", shards=2, workers=3, runs=150, xdist=True),
    # processes
    case("file-counter", "processes", "marker", "cli", mode="processes", workers=2, runs=60),
    case(
        "file-counter", "processes", "marker", "ini",
        mode="processes", workers=2, runs=60, start_method="spawn",
    ),
    case("file-counter-harness", "processes", "harness", "marker", mode="processes", workers=2, runs=60),
    case(
        "file-counter-harness", "processes", "harness", "env",
        mode="processes", workers=2, runs=60, start_method="fork",
    ),
    case("journal", "processes", "run-all", "ini", all=True, mode="processes", workers=3),
    case("journal", "processes", "run-all", "env", all=True, mode="processes", runs=60),
    case(
        "file-counter", "processes", "shards", "cli", xdist=True,
        shards=2, mode="processes", workers=2, runs=60,
    ),
    case("file-counter", "processes", "shards", "marker", shards=2, mode="processes", workers=2, runs=60),
    # asyncio
    case("price-cache", "asyncio", "marker", "env", workers=3, runs=120),
    case("price-cache", "asyncio", "marker", "marker", workers=3, runs=120),
    case("wallet", "asyncio", "harness", "ini", workers=3, runs=120),
    case("wallet", "asyncio", "harness", "cli", mode="asyncio", workers=3, runs=120),
    case("store", "asyncio", "run-all", "cli", all=True, workers=3),
    case("store", "asyncio", "run-all", "ini", all=True, runs=60),
    case("price-cache", "asyncio", "shards", "marker", shards=2, workers=3, runs=120),
    case("price-cache", "asyncio", "shards", "env", shards=2, workers=3, runs=120),
    # the controlled scheduler (thread mode)
    case("lost-update", "threads", "marker", "cli", "scheduler", schedule="random", workers=3, runs=150),
    case("cache-body", "threads", "marker", "marker", "scheduler", schedule="pct", workers=3, runs=150),
    case("cache-harness", "threads", "harness", "env", "scheduler", schedule="random", runs=150),
    case("bus", "threads", "run-all", "ini", "scheduler", all=True, schedule="pct", workers=3),
    # budget hunts: the line carries --concurrency-replay-runs=N
    case("lost-update", "threads", "marker", "cli", "budget", budget=3, workers=3),
    case("cache-harness", "threads", "harness", "marker", "budget", budget=3, workers=3),
    case("price-cache", "asyncio", "marker", "marker", "budget", budget=3, workers=3),
    case("price-cache", "asyncio", "shards", "ini", "budget", shards=2, budget=3, workers=3),
    case("file-counter-harness", "processes", "harness", "env", "budget", budget=3, mode="processes", workers=2),
)
# fmt: on


# -- writing a case -------------------------------------------------------------------------


def spell(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def option(name: str) -> str:
    return "--concurrency-" + name.replace("_", "-")


def cli_options(settings: Given) -> list[str]:
    return [
        option(k) if v is True and k == "all" else f"{option(k)}={spell(v)}" for k, v in settings
    ]


def marker_settings(case: Case) -> Given:
    """The settings the test's own code gives."""
    if case.source != "marker":
        return ()
    return tuple((k, v) for k, v in case.settings if k not in SESSION_SETTINGS)


def outside_settings(case: Case) -> Given:
    """The settings given from outside the test's code: the line must carry these."""
    if case.source != "marker":
        return case.settings
    return tuple((k, v) for k, v in case.settings if k in SESSION_SETTINGS)


def test_source(case: Case) -> str:
    _, template = RACES[case.race]
    own = dict(marker_settings(case))
    if case.form in ("run-all", "harness"):
        marker = ""
    elif own:
        marker = "@pytest.mark.concurrent(" + ", ".join(f"{k}={v!r}" for k, v in own.items()) + ")"
    else:
        marker = "@pytest.mark.concurrent"
    runs_args = [repr(own["runs"])] if "runs" in own else []
    runs_args += [f"{k}={own[k]!r}" for k in ("budget", "mode", "schedule") if k in own]
    workers = f", workers={own['workers']!r}" if "workers" in own and case.form == "harness" else ""
    text = Template(textwrap.dedent(template)).substitute(
        marker=marker, runs=", ".join(runs_args), workers=workers
    )
    return text.lstrip()


def helper_text(source: str | Path) -> str:
    if isinstance(source, Path):
        return source.read_text()
    return textwrap.dedent(source).lstrip()


def write_case(directory: Path, case: Case) -> None:
    directory.mkdir(parents=True)
    for name, source in HELPERS.items():
        (directory / name).write_text(helper_text(source))
    (directory / TEST_FILE).write_text(test_source(case))
    ini = "[pytest]\n"
    if case.source == "ini":
        ini += "".join(f"concurrency_{k} = {spell(v)}\n" for k, v in case.settings)
    (directory / "pytest.ini").write_text(ini)


def first_command(case: Case) -> tuple[list[str], dict[str, str]]:
    args = ["pytest", TEST_FILE, *FIRST_RUN_ARGS]
    env: dict[str, str] = {}
    if case.source == "cli":
        args += cli_options(case.settings)
    elif case.source == "env":
        env = {f"{ENV_PREFIX}{k.upper()}": spell(v) for k, v in case.settings}
    elif case.source == "marker":
        args += cli_options(outside_settings(case))
    if case.xdist:
        args += ["-n", "2"]
    return args, env


def expected_options(case: Case) -> list[str]:
    """What the printed line must hold, beyond the node id and the seed."""
    wanted = []
    defaults = PluginSettings()
    for name, value in outside_settings(case):
        if getattr(defaults, name, None) == value:
            continue  # a default needs no option: the replay has it too
        if name == "budget":
            wanted.append("--concurrency-replay-runs=")
        elif name == "all":
            wanted.append("--concurrency-all")
        else:
            wanted.append(f"{option(name)}={spell(value)}")
    if case.setting("budget") is not None and case.source == "marker":
        wanted.append("--concurrency-replay-runs=")
    return wanted


def carries(line: str, wanted: list[str]) -> list[str]:
    """The wanted options missing from the line."""
    parts = shlex.split(line)
    return [
        w for w in wanted if not any(p == w or (w.endswith("=") and p.startswith(w)) for p in parts)
    ]


# -- running pytest and reading its report --------------------------------------------------

REPRODUCE = re.compile(r"reproduce: (pytest .+?)\s*$", re.MULTILINE)
PLUGIN_ORIGIN = re.compile(r"^[E\s]*?([A-Za-z_][\w.]*) at ([\w./-]+\.py:\d+)", re.MULTILINE)
PYTEST_ORIGIN = re.compile(r"^([\w./-]+\.py):(\d+): ([A-Za-z_][\w.]*)\s*$", re.MULTILINE)
FAILING_RUN = re.compile(r": failed in run (\d+) \(")


@dataclass
class Session:
    code: int
    output: str
    seconds: float

    @property
    def line(self) -> str | None:
        found = REPRODUCE.search(self.output)
        return found.group(1) if found else None

    def origins(self) -> list[str]:
        ours = [f"{m.group(1)} at {m.group(2)}" for m in PLUGIN_ORIGIN.finditer(self.output)]
        pytests = [
            f"{m.group(3)} at {m.group(1)}:{m.group(2)}"
            for m in PYTEST_ORIGIN.finditer(self.output)
        ]
        return ours + pytests

    @property
    def origin(self) -> str | None:
        origins = self.origins()
        return origins[0] if origins else None

    @property
    def failing_run(self) -> int | None:
        found = FAILING_RUN.search(self.output)
        return int(found.group(1)) if found else None


def base_environment() -> dict[str, str]:
    """This environment without any PYTEST_CONCURRENCY_* or PYTEST_ADDOPTS, the venv first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.pop("PYTEST_ADDOPTS", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["COLUMNS"] = "200"
    return env


def run_pytest(args: list[str], cwd: Path, env: dict[str, str]) -> Session:
    started = time.perf_counter()
    try:
        done = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout or b""
        code, output = -1, out.decode() if isinstance(out, bytes) else out
    return Session(code, output, time.perf_counter() - started)


# -- one case -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    mode: str
    form: str
    source: str
    note: str
    race: str
    bar: int
    tries: int = 0
    found: bool = False
    line: str = ""
    origin: str = ""
    missing: list[str] = field(default_factory=list)
    first_run: int | None = None
    replays: list[bool] = field(default_factory=list)
    replay_runs: list[int | None] = field(default_factory=list)
    replay_origins: list[str | None] = field(default_factory=list)
    seconds: float = 0.0
    problem: str = ""
    widened: str = ""  # --widen-replay-runs: the option of the what-if replays
    widened_replays: list[bool] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(self.replays)

    @property
    def ok(self) -> bool:
        return self.found and not self.missing and self.passed >= self.bar and not self.problem


def widen(command: list[str], floor: int) -> list[str]:
    """``--concurrency-replay-runs=K`` raised to ``floor`` (a what-if, not the printed line)."""
    prefix = "--concurrency-replay-runs="
    return [
        f"{prefix}{max(int(p[len(prefix) :]), floor)}" if p.startswith(prefix) else p
        for p in command
    ]


def run_case(
    case: Case, directory: Path, replays: int, verbose: bool, floor: int | None = None
) -> Result:
    result = Result(
        case.name, case.mode, case.form, case.source, case.note, case.race, case.bar(replays)
    )
    started = time.perf_counter()
    write_case(directory, case)
    base = base_environment()
    args, env = first_command(case)
    first: Session | None = None
    for attempt in range(1, FIRST_TRIES + 1):
        result.tries = attempt
        first = run_pytest(args, directory, {**base, **env})
        if first.code == 1 and first.line:
            break
        if first.code not in (0, 1):
            result.problem = f"first run exited with {first.code}"
            break
    assert first is not None
    if verbose or result.problem:
        print(f"--- {case.name}: {shlex.join(args)} {env or ''}\n{first.output[-3000:]}")
    if first.code != 1 or not first.line or first.origin is None:
        result.seconds = time.perf_counter() - started
        result.problem = result.problem or "the first runs did not find the race"
        return result
    result.found = True
    result.line, result.origin, result.first_run = first.line, first.origin, first.failing_run
    result.missing = carries(first.line, expected_options(case))
    if case.source == "ini":  # the keys that gave the setting are gone
        (directory / "pytest.ini").write_text("[pytest]\n")
    command = shlex.split(first.line)
    wider = widen(command, floor) if floor is not None else command
    if wider != command:
        result.widened = next(p for p in wider if p.startswith("--concurrency-replay-runs="))
    for _ in range(replays):
        again = run_pytest(command, directory, base)  # no PYTEST_CONCURRENCY_* at all
        same = again.code == 1 and first.origin in again.origins()
        result.replays.append(same)
        result.replay_runs.append(again.failing_run if again.code == 1 else None)
        result.replay_origins.append(again.origin)
        if verbose or (again.code not in (0, 1)):
            print(f"--- replay of {case.name} (exit {again.code}):\n{again.output[-3000:]}")
        if wider != command:  # the what-if, interleaved with the line as printed
            other = run_pytest(wider, directory, base)
            result.widened_replays.append(other.code == 1 and first.origin in other.origins())
    result.seconds = time.perf_counter() - started
    return result


# -- the table ------------------------------------------------------------------------------


def runs_cell(result: Result) -> str:
    if not result.found:
        return "-"
    replays = ", ".join("-" if run is None else str(run) for run in result.replay_runs)
    return f"{result.first_run}; {replays}"


def found_cell(result: Result) -> str:
    if not result.found:
        return f"n ({result.tries} tries)"
    return "y" if result.tries == 1 else f"y (try {result.tries})"


def table(results: list[Result], replays: int) -> str:
    head = (
        "| case | mode | form | source | first run found | replays failing, same origin | bar "
        "| failing run: first; replays | line carries the settings | time s |"
    )
    rows = [head, "|" + "---|" * 10]
    for r in results:
        carried = "no: " + " ".join(r.missing) if r.missing else ("y" if r.found else "-")
        verdict = "" if r.ok else " **below**"
        widened = f" ({sum(r.widened_replays)}/{replays} with {r.widened})" if r.widened else ""
        rows.append(
            f"| {r.name} | {r.mode} | {r.form} | {r.source} | {found_cell(r)} "
            f"| {r.passed}/{replays}{verdict}{widened} | {r.bar}/{replays} | {runs_cell(r)} "
            f"| {carried} | {r.seconds:.1f} |"
        )
    return "\n".join(rows)


def repeat_table(results: list[Result], replays: int) -> str:
    """With ``--repeat``: each case's repetitions together."""
    rows = [
        "| case | repetitions | first run found | replays failing, same origin "
        "| repetitions at the bar | replays failing, by the first run's failing run "
        "| what-if: replays failing with --widen-replay-runs |",
        "|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(r.name for r in results))
    for name in names:
        mine = [r for r in results if r.name == name]
        found = [r for r in mine if r.found]
        by_run: dict[int | None, list[int]] = {}
        for r in found:
            by_run.setdefault(r.first_run, []).append(r.passed)
        spread = "; ".join(
            f"run {run}: {sum(p)}/{replays * len(p)}"
            for run, p in sorted(
                by_run.items(), key=lambda item: -1 if item[0] is None else item[0]
            )
        )
        wider = [ok for r in found for ok in (r.widened_replays or r.replays)]
        what_if = f"{sum(wider)}/{len(wider)}" if any(r.widened for r in found) else "-"
        rows.append(
            f"| {name} | {len(mine)} | {len(found)}/{len(mine)} "
            f"| {sum(r.passed for r in found)}/{replays * len(found)} "
            f"| {sum(r.ok for r in mine)}/{len(mine)} | {spread} | {what_if} |"
        )
    return "\n".join(rows)


def machine() -> str:
    import pytest

    return (
        f"nproc {len(os.sched_getaffinity(0))}, {cpu_model()}, "
        f"{platform.system()} {platform.release()}, CPython {platform.python_version()}, "
        f"pytest {pytest.__version__}; load average {load()}"
    )


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def now() -> str:
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replays", type=int, default=5)
    parser.add_argument(
        "--cases",
        default="",
        help="only the cases whose name contains one of these (comma-separated)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="run each case this many times")
    parser.add_argument(
        "--widen-replay-runs",
        type=int,
        metavar="N",
        help="what-if: also replay each budget hunt's line with --concurrency-replay-runs "
        "raised to N (interleaved with the line as printed; not counted in the verdict)",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--show", metavar="CASE", help="print one case's test file and exit")
    parser.add_argument("--verbose", action="store_true", help="print every pytest output")
    parser.add_argument("--keep", action="store_true", help="keep the case directories")
    parser.add_argument("--json", metavar="PATH", help="write every result as JSON")
    options = parser.parse_args()
    if shutil.which("pytest", path=str(Path(sys.executable).parent)) is None:
        sys.exit(f"no pytest next to {sys.executable}: run this with the venv's python")
    chosen = [c for c in CASES if any(part in c.name for part in options.cases.split(","))]
    if options.list:
        for c in chosen:
            print(c.name, c.race, dict(c.settings), "xdist" if c.xdist else "")
        return 0
    if options.show:
        print(test_source(next(c for c in CASES if c.name == options.show)))
        return 0
    print(f"{now()}; {machine()}")
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="replay_lines_"))
    results = []
    try:
        for repetition in range(options.repeat):
            for index, c in enumerate(chosen):
                directory = base / f"{repetition:02d}-{index:02d}-{c.name}"
                result = run_case(
                    c, directory, options.replays, options.verbose, options.widen_replay_runs
                )
                results.append(result)
                status = "ok" if result.ok else "BELOW THE BAR"
                print(
                    f"{c.name:38} found={found_cell(result):14} replays {result.passed}/"
                    f"{options.replays} (bar {result.bar}) {result.seconds:5.1f}s {status:13} "
                    f"{result.line}"
                    + (f"  [{result.problem}]" if result.problem else "")
                    + (f"  [missing {' '.join(result.missing)}]" if result.missing else "")
                    + (
                        f"  [{sum(result.widened_replays)}/{options.replays} with {result.widened}]"
                        if result.widened
                        else ""
                    ),
                    flush=True,
                )
    finally:
        if options.keep:
            print(f"case directories kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    wall = time.perf_counter() - started
    print()
    print(table(results, options.replays))
    if options.repeat > 1:
        print()
        print(repeat_table(results, options.replays))
    below = [r for r in results if not r.ok]
    print(
        f"\n{len(results)} cases, {len(results) - len(below)} at or above the bar, "
        f"{len(below)} below; {wall:.0f} s; ended {now()}, load average {load()}"
    )
    for r in below:
        print(
            f"below the bar: {r.name}: {r.problem} origin {r.origin}; replays' first origins "
            f"{r.replay_origins}; {r.line}"
        )
    if options.json:
        Path(options.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
