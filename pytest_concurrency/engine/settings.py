"""One frozen :class:`Settings`, resolved with a stated precedence.

Precedence: marker > command line > ``PYTEST_CONCURRENCY_*`` environment > ini > default.
A bad value raises :class:`SettingsError` whose message names where the value came from
(``--concurrency-workers``, ``PYTEST_CONCURRENCY_WORKERS``, ``concurrency_workers`` in the ini
file, or the marker) and how to fix it. Pure module: no pytest import.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_concurrency import messages
from pytest_concurrency.engine.modes import DEFAULT_MODE, mode_of
from pytest_concurrency.engine.modes import NAMES as MODES
from pytest_concurrency.errors import SettingsError

MAX_WORKERS = 4096
MAX_RUNS = 10_000_000
DEFAULT_WORKERS = 4
DEFAULT_RUNS = 100
DEFAULT_TIMEOUT = 60.0
DEFAULT_AUDIT_COST = 8.0
"""``--concurrency-all``'s audit costs about this multiple of the plain run (engine/audit.py):
8, not 10, leaves room for what the plain cost as measured misses (a plain session's start-up,
the plugin's own setup per test, plain calls slowed by its lock tracking), so that the whole
audited session stays within 10x of the plain session (benchmarks/README.md, issue 17)."""
ENV_PREFIX = "PYTEST_CONCURRENCY_"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

DEFAULT_UNSAFE_FIXTURES = (
    "capsys",
    "capsysbinary",
    "capfd",
    "capfdbinary",
    "capteesys",
    "caplog",
    "monkeypatch",
    "recwarn",
    "pytester",
    "testdir",
)


@dataclass(frozen=True)
class Source:
    """Where a value came from, spelled the way the user wrote it."""

    kind: str  # "marker", "command line", "environment", "ini"
    name: str  # e.g. "--concurrency-workers", "PYTEST_CONCURRENCY_WORKERS", "workers="
    where: str = "the concurrent marker"

    def describe(self, raw: object) -> str:
        if self.kind == "marker":
            return f"{self.name}{raw!r} in {self.where}"
        if self.kind == "command line":
            return f"{self.name}={raw}"
        if self.kind == "environment":
            return f"environment variable {self.name}={raw}"
        return f"ini option {self.name} = {raw}"


def _fail(source: Source, raw: object, expected: str) -> SettingsError:
    return SettingsError(
        messages.INVALID_SETTING.format(where=source.describe(raw), expected=expected)
    )


def parse_int(raw: object, source: Source, *, low: int, high: int, example: str) -> int:
    if isinstance(raw, bool):
        raise _fail(source, raw, f"expected a whole number from {low} to {high}, e.g. {example}")
    value: int | None = None
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        try:
            value = int(raw.strip(), 0)
        except ValueError:
            value = None
    if value is None or not low <= value <= high:
        raise _fail(source, raw, f"expected a whole number from {low} to {high}, e.g. {example}")
    return value


def as_number(raw: object) -> float | None:
    """A number given as a number or a string; None for anything else (a bool included)."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            return None
    return None


def parse_seconds(raw: object, source: Source, *, example: str) -> float:
    value = as_number(raw)
    if value is None or not value > 0 or value != value or value == float("inf"):
        raise _fail(source, raw, f"expected a number of seconds greater than 0, e.g. {example}")
    return value


def parse_bool(raw: object, source: Source) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return raw.strip().lower() in TRUE_WORDS
    raise _fail(source, raw, "expected true or false")


def parse_mode(raw: object, source: Source) -> str:
    if isinstance(raw, str) and raw.strip() in MODES:
        return raw.strip()
    hint = ""
    if isinstance(raw, str):
        close = difflib.get_close_matches(raw.strip(), MODES, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
    raise _fail(source, raw, f"mode must be one of {', '.join(MODES)}{hint}")


def parse_workers(raw: object, source: Source) -> int | None:
    """A count of workers, or None for "auto" (decided from the mode and the usable cores)."""
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return None
    return parse_int(raw, source, low=1, high=MAX_WORKERS, example="4 (or auto)")


def parse_runs(raw: object, source: Source) -> int:
    return parse_int(raw, source, low=1, high=MAX_RUNS, example="100")


def parse_seed(raw: object, source: Source) -> int:
    return parse_int(raw, source, low=0, high=2**64 - 1, example="12345")


def parse_leaks(raw: object, source: Source) -> str:
    choices = ("warn", "fail", "off")
    if isinstance(raw, str) and raw.strip().lower() in choices:
        return raw.strip().lower()
    raise _fail(source, raw, f"expected one of {', '.join(choices)}")


CLOCKS = ("virtual", "real")
"""asyncio mode's clock: virtual (timers cost no wall time, seeded jitter) or asyncio's own."""


def parse_clock(raw: object, source: Source) -> str:
    return parse_choice(raw, source, CLOCKS)


INJECTIONS = ("off", "cancel")
"""asyncio mode's injection: none, or seeded cancellations and early timeouts (opt-in)."""


def parse_inject(raw: object, source: Source) -> str:
    return parse_choice(raw, source, INJECTIONS)


GIL_CHOICES = ("warn", "fail")
"""What a concurrent test during which the GIL came back (free-threaded builds) is."""


def parse_gil(raw: object, source: Source) -> str:
    return parse_choice(raw, source, GIL_CHOICES)


SCHEDULES = ("off", "random", "pct")
SCHEDULE_ON = "on"
DEFAULT_STRATEGY = "random"
"""What ``schedule="on"`` (or ``schedule=True``) picks: the better finder on the race corpus,
median 1 run to first detection against 6 for PCT d=3 (benchmarks/README.md, "Controlled
scheduler"); choose "pct" for a stated bound."""
DEFAULT_SCHEDULE_DEPTH = 3
MAX_SCHEDULE_DEPTH = 8
LOCK_ORDER_CHOICES = ("fail", "warn", "off")
DATA_RACES_CHOICES = ("fail", "warn", "off")


def parse_choice(raw: object, source: Source, choices: tuple[str, ...]) -> str:
    if isinstance(raw, str) and raw.strip().lower() in choices:
        return raw.strip().lower()
    hint = ""
    if isinstance(raw, str):
        close = difflib.get_close_matches(raw.strip().lower(), choices, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
    raise _fail(source, raw, f"expected one of {', '.join(choices)}{hint}")


def parse_schedule(raw: object, source: Source) -> str:
    """The controlled scheduler of thread mode: off, random or pct."""
    if raw is False or raw is None:
        return "off"
    if raw is True or (isinstance(raw, str) and raw.strip().lower() == SCHEDULE_ON):
        return DEFAULT_STRATEGY
    return parse_choice(raw, source, (*SCHEDULES, SCHEDULE_ON))


def parse_schedule_depth(raw: object, source: Source) -> int:
    return parse_int(raw, source, low=1, high=MAX_SCHEDULE_DEPTH, example="3")


def parse_lock_order(raw: object, source: Source) -> str:
    return parse_choice(raw, source, LOCK_ORDER_CHOICES)


def parse_data_races(raw: object, source: Source) -> str:
    return parse_choice(raw, source, DATA_RACES_CHOICES)


def parse_data_race_allow(raw: object, source: Source) -> tuple[str, ...]:
    """Locations whose data races are benign ("Stats.hits,_cache[*]"): shell patterns."""
    if isinstance(raw, str):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(raw, (list, tuple)) and all(isinstance(part, str) for part in raw):
        return tuple(part.strip() for part in raw if part.strip())
    raise _fail(source, raw, messages.DATA_RACE_ALLOW_EXPECTED)


def parse_shards(raw: object, source: Source) -> int:
    return parse_int(raw, source, low=1, high=MAX_WORKERS, example="4")


def parse_timeout(raw: object, source: Source) -> float:
    return parse_seconds(raw, source, example="30")


def parse_budget(raw: object, source: Source) -> float:
    return parse_seconds(raw, source, example="60")


def parse_packages(raw: object, source: Source) -> tuple[str, ...]:
    """Import names of more code under test ("cachetools,sortedcontainers"), or "none"."""
    names: list[str] = []
    if isinstance(raw, str):
        names = [part.strip() for part in raw.replace(";", ",").split(",") if part.strip()]
    elif isinstance(raw, (list, tuple)) and all(isinstance(part, str) for part in raw):
        names = [part.strip() for part in raw if part.strip()]
    else:
        raise _fail(source, raw, messages.PACKAGES_EXPECTED)
    if not all(all(piece.isidentifier() for piece in name.split(".")) for name in names):
        raise _fail(source, raw, messages.PACKAGES_EXPECTED)
    return tuple(names)


def parse_start_method(raw: object, source: Source) -> str | None:
    """How process mode starts its workers; "auto" (None) lets the runner choose."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    if isinstance(raw, str) and raw.strip() in (*methods, "auto"):
        return None if raw.strip() == "auto" else raw.strip()
    raise _fail(
        source, raw, f"start method must be auto or one of {', '.join(methods)} on this platform"
    )


@dataclass(frozen=True)
class FieldSpec:
    """One setting: how to spell it in each source and how to read it."""

    name: str
    parse: Callable[[object, Source], Any]
    in_marker: bool = True
    cli: bool = True
    flag: bool = False  # a command-line option that may stand alone (``--concurrency-isolate``)

    @property
    def option(self) -> str:
        return "--concurrency-" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return "concurrency_" + self.name

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def ini(self) -> str:
        return "concurrency_" + self.name


FIELDS: dict[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        FieldSpec("mode", parse_mode),
        FieldSpec("workers", parse_workers),
        FieldSpec("runs", parse_runs),
        FieldSpec("seed", parse_seed),
        FieldSpec("timeout", parse_timeout),
        FieldSpec("perturb", parse_bool),
        FieldSpec("clock", parse_clock),
        FieldSpec("inject", parse_inject),
        FieldSpec("budget", parse_budget),
        FieldSpec("start_method", parse_start_method),
        FieldSpec("isolate", parse_bool, flag=True),
        FieldSpec("leaks", parse_leaks, in_marker=False),
        FieldSpec("gil", parse_gil, in_marker=False),
        FieldSpec("shards", parse_shards, in_marker=False),
        FieldSpec("schedule", parse_schedule),
        FieldSpec("schedule_depth", parse_schedule_depth),
        FieldSpec("lock_order", parse_lock_order),
        FieldSpec("data_races", parse_data_races),
        FieldSpec("data_race_allow", parse_data_race_allow),
        FieldSpec("packages", parse_packages),
    )
}
MARKER_KEYS = tuple(name for name, spec in FIELDS.items() if spec.in_marker)


@dataclass(frozen=True)
class Settings:
    """How one concurrent test (or, before a marker is applied, the session) runs."""

    mode: str = DEFAULT_MODE
    workers: int | None = DEFAULT_WORKERS  # None: auto
    runs: int = DEFAULT_RUNS
    seed: int | None = None  # None: derived from the session seed and the test id
    timeout: float | None = None  # None: DEFAULT_TIMEOUT, or less under pytest-timeout
    perturb: bool = True
    clock: str = CLOCKS[0]  # asyncio mode: "virtual" (runners/aio_clock.py) or "real"
    inject: str = INJECTIONS[0]  # asyncio mode: "off" or "cancel" (runners/aio_inject.py)
    budget: float | None = None
    start_method: str | None = None  # process mode; None: the runner's default
    isolate: bool = False  # the whole test in a supervised child process (plugin/isolation.py)
    leaks: str = "warn"
    gil: str = "warn"  # the GIL came back during a concurrent test: warn or fail
    shards: int = 1
    schedule: str = "off"  # the controlled scheduler: off, random or pct (threads only)
    schedule_depth: int = DEFAULT_SCHEDULE_DEPTH  # PCT's bug depth d
    lock_order: str = "fail"  # lock-order inversions: fail, warn, or off (no lock tracking)
    data_races: str = "fail"  # unordered conflicting accesses (threads): fail, warn, or off
    data_race_allow: tuple[str, ...] = ()  # locations whose races are benign (shell patterns)
    packages: tuple[str, ...] = ()  # more code under test (engine/undertest.py); "none": no auto

    def with_marker(self, kwargs: Mapping[str, object], where: str) -> Settings:
        """These settings overridden by a marker's keyword arguments."""
        changes: dict[str, Any] = {}
        for key, raw in kwargs.items():
            spec = FIELDS.get(key)
            if spec is None or not spec.in_marker:
                raise unknown_marker_key(key, where)
            changes[key] = spec.parse(raw, Source("marker", f"{key}=", where))
        return dataclasses.replace(self, **changes)

    def worker_count(self, usable_cores: int) -> int:
        if self.workers is not None:
            return self.workers
        return auto_workers(self.mode, usable_cores)


def auto_workers(mode: str, usable_cores: int) -> int:
    """``workers=auto``: processes get one per core; threads and tasks oversubscribe."""
    if mode_of(mode).one_worker_per_core:
        return max(2, usable_cores)
    return max(DEFAULT_WORKERS, 2 * usable_cores)


def unknown_marker_key(key: str, where: str) -> SettingsError:
    close = difflib.get_close_matches(key, MARKER_KEYS, n=1)
    hint = f' Did you mean "{close[0]}="?' if close else ""
    return SettingsError(
        messages.UNKNOWN_MARKER_ARGUMENT.format(
            key=key, where=where, hint=hint, known=", ".join(k + "=" for k in MARKER_KEYS)
        )
    )


SEED_LAST = "last"


def resolve(
    *,
    cli: Mapping[str, object | None],
    env: Mapping[str, str],
    ini: Mapping[str, str | None],
    last_seed: Callable[[], int] | None = None,
) -> Settings:
    """Session settings: command line > environment > ini > default (markers come later).

    A seed of ``last`` (from any source) is the previous session's, asked of ``last_seed``."""
    changes: dict[str, Any] = {}
    for spec in FIELDS.values():
        given = first_given(spec, cli=cli, env=env, ini=ini)
        if given is None:
            continue
        raw, source = given
        if spec.name == "seed" and is_last(raw):
            changes["seed"] = last_seed() if last_seed is not None else spec.parse(raw, source)
        else:
            changes[spec.name] = spec.parse(raw, source)
    return Settings(**changes)


def is_last(raw: object) -> bool:
    return isinstance(raw, str) and raw.strip().lower() == SEED_LAST


def first_given(
    spec: FieldSpec,
    *,
    cli: Mapping[str, object | None],
    env: Mapping[str, str],
    ini: Mapping[str, object | None],
) -> tuple[object, Source] | None:
    """The raw value of the first source that gives one, and that source; None if none."""
    raw_cli = cli.get(spec.dest)
    if spec.cli and raw_cli is not None:
        return raw_cli, Source("command line", spec.option)
    raw_env = env.get(spec.env)
    if raw_env not in (None, ""):
        return raw_env, Source("environment", spec.env)
    raw_ini = ini.get(spec.ini)
    if raw_ini not in (None, ""):
        return raw_ini, Source("ini", spec.ini)
    return None


# -- the session's own options: the same precedence, no marker ---------------------------


def parse_audit_cost(raw: object, source: Source) -> float:
    """The multiple of the plain run that ``--concurrency-all``'s audit may cost (>= 1)."""
    value = as_number(raw)
    if value is None or not 1 <= value < float("inf"):
        raise _fail(source, raw, messages.AUDIT_COST_EXPECTED)
    return value


def parse_path(raw: object, source: Source) -> str:
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    raise _fail(source, raw, "expected a path")


@dataclass(frozen=True)
class SessionOptions:
    """What the whole session does beside running tests: run-all, the JSON report, charts."""

    run_all: bool = False
    audit_cost: float = DEFAULT_AUDIT_COST  # run-all: a multiple of the plain run
    json_path: str | None = None
    plot_dir: str | None = None
    replay_runs: int | None = None  # make exactly this many runs, whatever marker or budget say
    remember: bool = True  # the failing-seed memory (engine/memory.py)


SESSION_FIELDS: dict[str, FieldSpec] = {
    "run_all": FieldSpec("all", parse_bool, in_marker=False),
    "audit_cost": FieldSpec("audit_cost", parse_audit_cost, in_marker=False),
    "json_path": FieldSpec("json", parse_path, in_marker=False),
    "plot_dir": FieldSpec("plot", parse_path, in_marker=False),
    "replay_runs": FieldSpec("replay_runs", parse_runs, in_marker=False),
    "remember": FieldSpec("remember", parse_bool, in_marker=False),
}


def resolve_session_options(
    *,
    cli: Mapping[str, object | None],
    env: Mapping[str, str],
    ini: Mapping[str, object | None],
) -> SessionOptions:
    """Run-all, the JSON path and the chart folder: command line > environment > ini > default."""
    changes: dict[str, Any] = {}
    for field_name, spec in SESSION_FIELDS.items():
        given = first_given(spec, cli=cli, env=env, ini=ini)
        if given is not None:
            changes[field_name] = spec.parse(*given)
    return SessionOptions(**changes)
