"""asyncio timer races on the virtual clock against the real clock (issue 19).

The three timer races in ``benchmarks/races/`` (a payment's second click during the provider
call, a retry that charges twice after a timeout, a cached token used after it expired), each
in the body form (``@pytest.mark.concurrent``) and the harness form (``concurrency.runs(100)``),
and their fixed twins, all with the defaults (100 runs, the seed from the command line):

* on the virtual clock (the default), ``--seeds`` sessions with seeds 1..N;
* on the real clock (``--concurrency-clock=real``), ``--real-seeds`` sessions.

A race is *found* when its buggy test (a strict xfail) fails; a *false alarm* is a fixed twin
that fails. Times are the tests' call times (junit ``call`` durations): we stop at the first
failing run, so a race found costs its runs up to that one, a race not found its 100 runs.

    python benchmarks/timer_races.py --seeds 20 --real-seeds 3 --readme

``--readme`` rewrites only the ``## asyncio timer races (issue 19)`` section of
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench_common import run_pytest

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
SECTION = "## asyncio timer races (issue 19)"
NEXT_SECTION = "## Controlled scheduler"
SESSION_TIMEOUT = 1800.0
RACES = (
    ("test_payment_timer.py", "payment: second click during the provider call"),
    ("test_retry_after_timeout.py", "retry after a timeout charges twice"),
    ("test_token_expiry.py", "cached token used after it expired"),
)
FORMS = ("", "_harness")


@dataclass
class Cell:
    """One test over the sessions of one clock: how often it failed, and its call times."""

    failed: int = 0
    sessions: int = 0
    seconds: list[float] = field(default_factory=list)


def session(python: str, seed: int, clock: str) -> dict[str, tuple[bool, float]]:
    """One pytest session over the three modules: each test's (failed, call seconds)."""
    args = [f"--concurrency-seed={seed}", f"--concurrency-clock={clock}"]
    ran = run_pytest(python, [module for module, _ in RACES], args, timeout=SESSION_TIMEOUT)
    return {
        nodeid: (result.failed, result.seconds or 0.0) for nodeid, result in ran.results.items()
    }


def measure(python: str, seeds: Sequence[int], clock: str) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for seed in seeds:
        for nodeid, (did_fail, seconds) in session(python, seed, clock).items():
            cell = cells.setdefault(nodeid, Cell())
            cell.sessions += 1
            cell.failed += did_fail
            cell.seconds.append(seconds)
    return cells


def ms(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) * 1000:.0f} (max {max(values) * 1000:.0f})"


def table(virtual: dict[str, Cell], real: dict[str, Cell]) -> list[str]:
    lines = [
        "| race | form | virtual: found | virtual: ms, median (max) | virtual: twin failed "
        "| real: found | real: ms, median (max) | real: twin failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for module, label in RACES:
        for form in FORMS:
            row = [label, "harness" if form else "body"]
            for cells in (virtual, real):
                buggy = cells.get(f"{module}::test_buggy{form}", Cell())
                fixed = cells.get(f"{module}::test_fixed{form}", Cell())
                row += [
                    f"{buggy.failed}/{buggy.sessions}",
                    ms(buggy.seconds),
                    f"{fixed.failed}/{fixed.sessions}",
                ]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def machine_line(python: str) -> str:
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return (
        f"Machine: {os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}), "
        f"{platform.system()} {platform.release()}, CPython {version}; "
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}."
    )


ABOUT = """\
Each buggy test is a strict xfail (found = it failed), each twin must pass. Defaults
throughout: 100 runs per test, the body form with the marker's workers, the harness form with
`concurrency.runs(100)`. On the virtual clock a sleep costs no wall time and runs from 1 on make
some timers late from the seed (never early, at most their delay late:
`pytest_concurrency/runners/aio_clock.py`); on the real clock the timers fire when the machine
lets them, in their real order, and every run costs its sleeps."""


def section(options: argparse.Namespace, virtual: dict[str, Cell], real: dict[str, Cell]) -> str:
    command = (
        f"python benchmarks/timer_races.py --seeds {options.seeds} "
        f"--real-seeds {options.real_seeds}"
    )
    return "\n".join(
        [
            SECTION,
            "",
            ABOUT,
            "",
            f"Command: `{command}`. {machine_line(options.python)}",
            "",
            *table(virtual, real),
            "",
        ]
    )


def write_readme(body: str) -> None:
    lines = README.read_text().splitlines()
    names = [line.strip() for line in lines]
    if SECTION in names:
        start = names.index(SECTION)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), None)
        rest = lines[end:] if end is not None else []
        lines = [*lines[:start], *body.rstrip("\n").splitlines(), *([""] if rest else []), *rest]
    else:
        at = names.index(NEXT_SECTION) if NEXT_SECTION in names else len(lines)
        lines = [*lines[:at], *body.rstrip("\n").splitlines(), "", *lines[at:]]
    README.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--real-seeds", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--readme", action="store_true")
    options = parser.parse_args(argv)
    virtual = measure(options.python, range(1, options.seeds + 1), "virtual")
    real = measure(options.python, range(1, options.real_seeds + 1), "real")
    body = section(options, virtual, real)
    print(body)
    if options.readme:
        write_readme(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
