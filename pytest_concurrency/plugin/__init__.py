"""pytest-concurrency's entry point: options, ini keys and markers; registers the session.

It imports almost nothing: the session registers the per-test hooks, and imports what they
drive, only when collection finds a test that needs them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.modes import NAMES as MODES
from pytest_concurrency.engine.outputs import check_output_paths
from pytest_concurrency.engine.settings import (
    DEFAULT_UNSAFE_FIXTURES,
    ENV_PREFIX,
    FIELDS,
    SESSION_FIELDS,
    first_given,
    resolve,
    resolve_session_options,
)
from pytest_concurrency.errors import SettingsError
from pytest_concurrency.plugin import calls
from pytest_concurrency.plugin.items import is_xdist_worker
from pytest_concurrency.plugin.session import ConcurrencySession, ShardHooks
from pytest_concurrency.plugin.summary import CACHE_SEED_KEY

if TYPE_CHECKING:
    from pytest_concurrency.driver.harness import Concurrency
    from pytest_concurrency.engine.memory import Memory

MEMORY_KEY = "concurrency/failing_seeds"
"""Where the failing-seed memory lives in pytest's cache (``engine/memory.py``)."""

SESSION_NAME = "concurrency-session"
SHARDS_NAME = "concurrency-shards"
OPTION_HELP = {
    "mode": f"default mode of concurrent tests: {', '.join(MODES)} (default: threads)",
    "workers": "workers per run, a number or 'auto' (default: 4)",
    "runs": "runs per concurrent test (default: 100)",
    "seed": "the seed that drives every random choice, or 'last' for the previous run's "
    "(default: random, printed in the header)",
    "timeout": "seconds one run may take before its workers are reported as hung (default: 60)",
    "perturb": "seeded schedule perturbation: true or false (default: true)",
    "clock": "asyncio mode's clock: virtual (sleeps and timers cost no wall time, the clock "
    "jumps to the next timer when every task waits, timers jitter from the seed) or real "
    "(default: virtual)",
    "inject": "asyncio mode's injection: cancel (runs from 1 on cancel a worker at an await "
    "drawn from the seed, and let asyncio.timeout/wait_for expire early) or off (default: off)",
    "budget": "stress each concurrent test for this many seconds instead of a run count",
    "start_method": "how mode=processes starts workers: forkserver, spawn, fork or auto "
    "(default: auto, forkserver where available, else spawn)",
    "isolate": "run each concurrent test, setup to teardown, in a supervised child process "
    "(fork): a worker that crashes the interpreter (segfault, abort, fatal error) fails that "
    "test with the signal, every thread's stack and the reproduction line, and the session goes "
    "on; true or false, alone means true (default: false)",
    "leaks": "threads and processes a concurrent test leaves running: warn, fail or off "
    "(default: warn)",
    "gil": "a concurrent test during which the GIL came back (a free-threaded build that "
    "imported an extension module without Py_mod_gil): warn (named in the summary and JSON) or "
    "fail (default: warn)",
    "shards": "split each concurrent test into this many items with disjoint seeds, so that "
    "pytest-xdist spreads one test's hunt over all its workers (default: 1)",
    "schedule": "controlled scheduler for thread mode, one worker at a time in an order drawn "
    "from the seed (exact replay): off, random, pct (with a stated bound), or on "
    "(= random, the faster finder) (default: off)",
    "schedule_depth": "PCT's bug depth d for --concurrency-schedule=pct (default: 3)",
    "lock_order": "lock-order inversions (potential deadlocks) in thread tests: fail, warn, or "
    "off (no lock tracking, no deadlock watchdog) (default: fail)",
    "data_races": "data races in thread tests (two workers access the same location, one "
    "writes, nothing orders them; found even when the run passed): fail, warn, or off (no "
    "access tracking) (default: fail)",
    "data_race_allow": "locations whose data races are benign, comma-separated shell patterns "
    "as the report names them (Stats.hits,_cache[*]) (default: none)",
    "packages": "more code under test, by import name (a library whose shared use the tests "
    "check), comma-separated; 'none' also leaves out the project's own installed packages "
    "(default: the project's packages, found from its metadata, wherever installed)",
}
INI_HELP = "default for --concurrency-{name} (environment: " + ENV_PREFIX + "{upper})"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("concurrency", "run tests concurrently (pytest-concurrency)")
    for name, spec in FIELDS.items():
        if spec.cli:
            flag: dict[str, Any] = {"nargs": "?", "const": "true"} if spec.flag else {}
            group.addoption(
                spec.option,
                dest=spec.dest,
                default=None,
                metavar=name.upper(),
                help=OPTION_HELP.get(name, name),
                **flag,
            )
        parser.addini(
            spec.ini, INI_HELP.format(name=name.replace("_", "-"), upper=name.upper()), default=None
        )
    group.addoption(
        "--concurrency-all",
        action="store_true",
        default=None,
        dest="concurrency_all",
        help="treat every test as marked concurrent; tests marked not_concurrent or "
        "using thread-unsafe fixtures run once, normally",
    )
    parser.addini("concurrency_all", "default for --concurrency-all", type="bool", default=False)
    group.addoption(
        "--concurrency-audit-cost",
        dest="concurrency_audit_cost",
        default=None,
        metavar="N",
        help="--concurrency-all audits each test for about N times its plain cost: once "
        "plainly, then concurrent runs while its share lasts, more for a test that touches "
        "shared state (default: 8; --concurrency-budget=SECONDS makes it a session budget, "
        "--concurrency-runs=N a fixed count)",
    )
    parser.addini("concurrency_audit_cost", "default for --concurrency-audit-cost", default=None)
    group.addoption(
        "--concurrency-json",
        dest="concurrency_json",
        default=None,
        metavar="PATH",
        help="write a JSON report of concurrent tests (and scaling) to PATH, a regular file "
        "(checked at start-up; missing directories are created)",
    )
    group.addoption(
        "--concurrency-plot",
        dest="concurrency_plot",
        default=None,
        metavar="DIR",
        help="write scaling charts, one per test, and an index page to DIR (checked at "
        "start-up; missing directories are created)",
    )
    group.addoption(
        "--concurrency-remember",
        dest="concurrency_remember",
        default=None,
        metavar="BOOL",
        help="the failing-seed memory: a failing test's seed is kept in pytest's cache and "
        "tried first by the next session that gives no seed: true or false (default: true)",
    )
    group.addoption(
        "--concurrency-replay-runs",
        dest="concurrency_replay_runs",
        default=None,
        metavar="N",
        help="make exactly N runs of each concurrent test, whatever its marker, budget or "
        "runs() say: how a reproduction line replays a budget hunt up to its failing run",
    )
    parser.addini(
        "concurrency_unsafe_fixtures",
        "fixtures that make --concurrency-all run a test once, normally "
        f"(default: {', '.join(DEFAULT_UNSAFE_FIXTURES)})",
        type="linelist",
        default=list(DEFAULT_UNSAFE_FIXTURES),
    )
    parser.addini(
        "concurrency_unsafe_names",
        "more names (calls or decorators, dotted: mylib.reset_registry) whose use in a test "
        "makes --concurrency-all run it once, normally",
        type="linelist",
        default=[],
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", messages.MARKER_CONCURRENT)
    config.addinivalue_line("markers", messages.MARKER_NOT_CONCURRENT)
    config.addinivalue_line("markers", messages.MARKER_SCALING)
    try:
        session = build_session(config)
    except SettingsError as error:
        raise pytest.UsageError(str(error)) from None
    config.pluginmanager.register(session, SESSION_NAME)
    if session.settings.shards >= 2:
        config.pluginmanager.register(ShardHooks(session), SHARDS_NAME)


def build_session(config: pytest.Config) -> ConcurrencySession:
    specs = [*FIELDS.values(), *SESSION_FIELDS.values()]
    cli = {spec.dest: config.getoption(spec.dest) for spec in specs if spec.cli}
    env = {spec.env: os.environ.get(spec.env, "") for spec in specs}
    ini = {spec.ini: config.getini(spec.ini) for spec in FIELDS.values()}
    ini["concurrency_all"] = config.getini("concurrency_all")
    ini["concurrency_audit_cost"] = config.getini("concurrency_audit_cost")
    settings = resolve(cli=cli, env=env, ini=ini, last_seed=lambda: last_seed(config))
    options = resolve_session_options(cli=cli, env=env, ini=ini)
    if not is_xdist_worker(config):  # the controller checked them; workers write no file
        check_output_paths(cli=cli, env=env, ini=ini)
    session_seed = settings.seed if settings.seed is not None else worker_seed(config)
    session = ConcurrencySession(
        config,
        settings=dataclasses.replace(settings, seed=None),
        session_seed=session_seed,
        run_all=options.run_all,
        unsafe_fixtures=config.getini("concurrency_unsafe_fixtures"),
        unsafe_names=config.getini("concurrency_unsafe_names"),
        json_path=Path(options.json_path).resolve() if options.json_path else None,
        plot_dir=Path(options.plot_dir).resolve() if options.plot_dir else None,
        replay_runs=options.replay_runs,
        memory=load_memory(config) if options.remember else None,
        memory_in_use=options.remember and settings.seed is None,
        audit_cost=options.audit_cost,
        given_settings=frozenset(
            name
            for name, spec in FIELDS.items()
            if first_given(spec, cli=cli, env=env, ini=ini) is not None
        ),
    )
    check_packages(session, cli=cli, env=env, ini=ini)
    return session


def check_packages(
    session: ConcurrencySession,
    *,
    cli: dict[str, object],
    env: dict[str, str],
    ini: dict[str, object],
) -> None:
    """A ``--concurrency-packages`` name (command line, environment or ini) that cannot be
    imported is a usage error at start-up, naming it and where it came from."""
    names = session.settings.packages
    if not names:
        return
    unknown = session.unknown_package(names)
    given = first_given(FIELDS["packages"], cli=cli, env=env, ini=ini)
    if unknown is not None and given is not None:
        raw, source = given
        where = source.describe(raw)
        raise SettingsError(messages.UNKNOWN_PACKAGE.format(where=where, name=unknown))


def load_memory(config: pytest.Config) -> Memory | None:
    """The failing-seed memory from pytest's cache; None without a cache."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return None
    raw = cache.get(MEMORY_KEY, None)
    if not raw:
        return {}  # nothing remembered: the memory's module is not even imported
    from pytest_concurrency.engine import memory

    return memory.load(raw)


def last_seed(config: pytest.Config) -> int:
    cache = getattr(config, "cache", None)
    value = cache.get(CACHE_SEED_KEY, None) if cache is not None else None
    if not isinstance(value, int):
        raise SettingsError(messages.SEED_LAST_MISSING)
    return value


def worker_seed(config: pytest.Config) -> int:
    """The controller's seed under pytest-xdist, else a new random seed."""
    workerinput = getattr(config, "workerinput", None)
    if isinstance(workerinput, dict) and isinstance(workerinput.get("concurrency_seed"), int):
        return int(workerinput["concurrency_seed"])
    from pytest_concurrency.engine.seeds import new_session_seed

    return new_session_seed()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:
    """pytest-xdist: every worker uses the controller's seed; the controller collects the
    entries that the workers' reports carry."""
    session = node.config.pluginmanager.get_plugin(SESSION_NAME)  # type: ignore[attr-defined]
    if isinstance(session, ConcurrencySession):
        node.workerinput["concurrency_seed"] = session.session_seed  # type: ignore[attr-defined]
        session.activate()
        session.give_crash_notes(node)


@pytest.fixture
def concurrency(request: pytest.FixtureRequest) -> Generator[Concurrency, None, None]:
    """Who am I (``.worker``, ``.run``), a ``.barrier()``, and the explicit stress harness
    ``for run in concurrency.runs(N): run(fn, workers=8)``."""
    session = request.config.pluginmanager.get_plugin(SESSION_NAME)
    assert isinstance(session, ConcurrencySession)
    fixture = calls.concurrency_fixture(session, request)
    try:
        yield fixture
    finally:
        fixture.close()


@pytest.fixture
def scaling(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``report = scaling(fn, *args, workers=, modes=, rounds=, budget=)`` measures ``fn`` at
    1..N workers in threads and processes; ``report.verdict``, ``.speedup(mode, n)``,
    ``.efficiency(mode, n)``, ``.summary()``."""
    from pytest_concurrency.plugin.scaling_hooks import scaling_fixture_value

    return scaling_fixture_value(request)
