"""What the session says: the header, the terminal summary, the JSON report and the plots."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine import cores
from pytest_concurrency.engine.settings import Settings
from pytest_concurrency.plugin.items import (
    ASYNCIO_PLUGIN,
    is_xdist_worker,
    xdist_worker_count,
)

SECTION_TITLE = "concurrency"
CACHE_SEED_KEY = "concurrency/seed"
"""Where the session seed is kept for ``--concurrency-seed=last``."""

if TYPE_CHECKING:  # imported where used: an unmarked suite never loads them
    from pytest_concurrency.engine.entries import ScalingEntry
    from pytest_concurrency.plugin.session import ConcurrencySession


def header_lines(session: ConcurrencySession, config: pytest.Config) -> list[str]:
    s = session.settings
    workers = "auto" if s.workers is None else str(s.workers)
    runs = f"{s.budget:g}s budget" if s.budget is not None else f"{s.runs} runs"
    runs = f"{workers} workers, {runs}" if session.audit is None else audit_defaults(session)
    return [
        f"concurrency: seed {session.session_seed} (replay: --concurrency-seed="
        f"{session.session_seed}); defaults: {s.mode}, {runs}, "
        f"perturbation {'on' if s.perturb else 'off'}"
        + ("; --concurrency-all" if session.run_all else ""),
        f"concurrency: cores {session.budget.describe()}; {cores.describe_interpreter()}",
        f"concurrency: {describe_start_method(s.start_method)}",
        *oversubscription_lines(session),
        *schedule_header_lines(s),
        *([messages.HEADER_ISOLATED] if s.isolate else []),
        *audit_header_lines(session),
        *memory_header_lines(session),
        *under_test_header_lines(session),
        *asyncio_fixture_lines(config),
    ]


def audit_workers(session: ConcurrencySession) -> int:
    from pytest_concurrency.engine.audit import AUDIT_WORKERS

    given = "workers" in session.given_settings
    return session.settings.worker_count(session.budget.usable) if given else AUDIT_WORKERS


def audit_defaults(session: ConcurrencySession) -> str:
    """What an audited test gets, for the header's defaults: its workers and the audit's
    cost multiple or session budget (never the marker's run count it does not use)."""
    ledger = session.audit
    assert ledger is not None
    workers = audit_workers(session)
    if ledger.budget is not None:
        return messages.HEADER_DEFAULTS_AUDIT_BUDGET.format(workers=workers, budget=ledger.budget)
    return messages.HEADER_DEFAULTS_AUDIT_COST.format(workers=workers, cost=ledger.cost)


def audit_header_lines(session: ConcurrencySession) -> list[str]:
    if session.audit is None:
        return []
    return [session.audit.header(audit_workers(session))]


def under_test_header_lines(session: ConcurrencySession) -> list[str]:
    from pytest_concurrency.engine.undertest import UnknownPackage, describe

    try:
        packages = session.packages_for(session.settings.packages)
    except UnknownPackage:  # refused at start-up already
        return []
    what = describe(session.config.rootpath, packages)
    return [messages.HEADER_UNDER_TEST.format(what=what)]


def memory_header_lines(session: ConcurrencySession) -> list[str]:
    count = len(session.memory or ()) if session.memory_in_use else 0
    if not count:
        return []
    return [messages.HEADER_MEMORY.format(count=count, tests="test" if count == 1 else "tests")]


def asyncio_fixture_lines(config: pytest.Config) -> list[str]:
    """With pytest-asyncio active: where a concurrent body that uses its fixtures runs."""
    if not config.pluginmanager.hasplugin(ASYNCIO_PLUGIN):
        return []
    return [messages.ASYNCIO_FIXTURES_HEADER]


def oversubscription(session: ConcurrencySession) -> dict[str, Any] | None:
    """xdist workers times our workers against the usable cores, under pytest-xdist."""
    processes = xdist_worker_count(session.config)
    if not processes:
        return None
    workers = session.settings.worker_count(session.budget.usable)
    busy = processes * workers
    return {
        "xdist_workers": processes,
        "workers_per_test": workers,
        "usable_cores": session.budget.usable,
        "ratio": round(busy / session.budget.usable, 2),
    }


def oversubscription_lines(session: ConcurrencySession) -> list[str]:
    over = oversubscription(session)
    if over is None:
        return []
    return [
        messages.OVERSUBSCRIBED.format(
            **over, busy=over["xdist_workers"] * over["workers_per_test"]
        )
    ]


def write_summary(session: ConcurrencySession, terminalreporter: Any) -> None:
    lines: list[str] = []
    if session.entries:
        from pytest_concurrency.engine.report import summary_lines

        lines = summary_lines(session.entries)
        if session.run_all:
            lines.extend(audit_lines(session))
    scaling = scaling_entries(session)
    if scaling:
        from pytest_concurrency.scaling.report import format_scaling_table

        lines.extend(format_scaling_table(scaling))
    lines.extend(session.plot_lines)
    lines.extend(session.gil.summary_lines())
    if session.abandoned_threads:
        lines.append(f"abandoned hung threads: {', '.join(session.abandoned_threads)}")
    lines.extend(f"leak: {text}" for text in session.leaked)
    if lines and not is_xdist_worker(session.config):
        lines.extend(line.removeprefix("concurrency: ") for line in oversubscription_lines(session))
    if session.json_path is not None and not is_xdist_worker(session.config):
        lines.append(session.json_error or f"JSON report: {session.json_path}")
    if not lines:
        return
    terminalreporter.write_sep("=", SECTION_TITLE)
    for line in lines:
        terminalreporter.write_line(line)


def audit_lines(session: ConcurrencySession) -> list[str]:
    """Run-all's report: what the audit cost and how it was spread, and per module."""
    from pytest_concurrency.engine.audit import cost_lines, module_lines
    from pytest_concurrency.engine.entries import concurrent_entries

    return [*cost_lines(concurrent_entries(session.entries)), *module_lines(session.entries)]


def audit_json(session: ConcurrencySession) -> dict[str, Any] | None:
    """The JSON report's ``audit``: the policy and the per-module tallies (run-all only)."""
    if not session.run_all:
        return None
    from pytest_concurrency.engine.audit import module_tallies

    ledger = session.audit
    return {
        "cost": ledger.cost if ledger is not None else None,
        "budget": ledger.budget if ledger is not None else None,
        "modules": {
            module: tally.as_json() for module, tally in module_tallies(session.entries).items()
        },
    }


def finish_session(session: ConcurrencySession) -> None:
    if is_xdist_worker(session.config):
        return
    cache = getattr(session.config, "cache", None)
    if cache is not None:
        cache.set(CACHE_SEED_KEY, session.session_seed)
        remember_failing_seeds(session, cache)
    if session.json_path is not None:
        session.json_error = write_json_report(session, session.json_path)
    if session.plot_dir is not None:
        session.plot_lines = write_plots(session, session.plot_dir)


def remember_failing_seeds(session: ConcurrencySession, cache: Any) -> None:
    """Keep this session's failing seeds (and forget the tests that passed) for the next."""
    if session.memory is None or not session.entries:
        return
    from pytest_concurrency.engine import memory
    from pytest_concurrency.plugin import MEMORY_KEY

    kept = memory.updated(
        session.memory, session.entries, session.session_seed, forget=session.memory_in_use
    )
    if kept != session.memory:
        cache.set(MEMORY_KEY, memory.dump(kept))


def write_json_report(session: ConcurrencySession, path: Path) -> str | None:
    """Write the JSON report; the warning line to show when that failed anyway (the path was
    checked at start-up), None when it was written. Never raises: the run's outcome stands."""
    from pytest_concurrency.engine import report
    from pytest_concurrency.engine.outputs import describe_error

    try:
        report.write_json(path, report.json_document(json_header(session), session.entries))
    except OSError as error:
        return messages.JSON_NOT_WRITTEN.format(path=path, error=describe_error(error, path))
    except ValueError as error:  # a value json cannot encode
        return messages.JSON_NOT_WRITTEN.format(path=path, error=error)
    return None


def scaling_entries(session: ConcurrencySession) -> list[ScalingEntry]:
    if not session.entries:
        return []
    from pytest_concurrency.engine.entries import scaling_entries as select

    return select(session.entries)


def write_plots(session: ConcurrencySession, directory: Path) -> list[str]:
    entries = scaling_entries(session)
    if not entries:
        return []
    from pytest_concurrency.errors import PlotUnavailableError
    from pytest_concurrency.scaling.plot import write_charts

    try:
        written = write_charts(entries, directory)
    except (PlotUnavailableError, OSError) as error:
        from pytest_concurrency.engine.outputs import describe_error

        problem = describe_error(error, directory) if isinstance(error, OSError) else error
        return [messages.PLOT_FAILED.format(directory=directory, error=problem)]
    return [
        messages.PLOT_WRITTEN.format(
            count=len(written), directory=directory, index=directory / "index.html"
        )
    ]


def json_header(session: ConcurrencySession) -> dict[str, Any]:
    return {
        "seed": session.session_seed,
        "python": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "gil_enabled": cores.gil_enabled(),
        **session.gil.json_header(session.entries),  # gil_enabled_at_start, gil_returns
        "free_threaded_build": cores.free_threaded_build(),
        "usable_cores": session.budget.usable,
        "cpu_count": session.budget.cpu_count,
        "pid": os.getpid(),
        "oversubscription": oversubscription(session),
        "audit": audit_json(session),
    }


def schedule_header_lines(settings: Settings) -> list[str]:
    """The controlled scheduler and lock-order settings, when they are not the defaults."""
    if settings.schedule == "off" and settings.lock_order == "fail":
        return []  # the defaults: nothing to say
    schedule = settings.schedule
    if schedule == "pct":
        schedule += f" (depth {settings.schedule_depth})"
    return [messages.HEADER_SCHEDULE.format(schedule=schedule, lock_order=settings.lock_order)]


def describe_start_method(start_method: str | None) -> str:
    """For the header: which start method process mode uses, and whether it was chosen."""
    if start_method is None:
        return messages.START_METHOD_DEFAULT.format(method=cores.default_start_method())
    return messages.START_METHOD_CHOSEN.format(method=start_method)
