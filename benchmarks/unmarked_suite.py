"""What the plugin costs a suite that does not use it: 2,000 unmarked trivial tests.

The suite is generated into a temporary directory (20 files of 100 tests, its own
``pytest.ini``) and run in a fresh interpreter, as a user runs it, with the plugin installed
and with ``-p no:concurrency``, interleaved (A B, B A, ...). The table gives the median wall
time and CPU time (user + system of the pytest process) of each arm and their ratio; the
target is no more than 3% slower with the plugin. On a shared machine wall time swings by tens
of percent from run to run; CPU time is the steadier of the two.

Then our cost is taken piece by piece without a profiler (the import of the plugin, and each
of our per-test hook functions called directly on the collected items), and the installed arm
runs once more under cProfile to list where our package spends its time in that suite.

On a shared machine the difference we look for (a few percent) is within the noise of CPU
time; ``--instructions`` counts instead the instructions each arm executes, once each, under
valgrind's cachegrind (deterministic with a fixed ``PYTHONHASHSEED``; about 100 times slower).

    python benchmarks/unmarked_suite.py                 # full run, 1.5 to 3 minutes
    python benchmarks/unmarked_suite.py --instructions  # + instruction counts, 2 to 4 minutes more
    python benchmarks/unmarked_suite.py --quick         # a few seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import os
import platform
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_common import cpu_model

TARGET = 0.03
FILES = 20
PACKAGE_DIR = "pytest_concurrency"
BASE_ARGS = (
    # no -q: the header is on, as in a user's plain `pytest` run (the header's lines are ours
    # too, and must not import the machinery)
    "-p",
    "no:cacheprovider",
    # pytest-run-parallel registers its entry point as "run-parallel": "no:run_parallel"
    # does not disable it, so both arms name it the way pytest knows it.
    "-p",
    "no:run-parallel",
)
PLUGIN_OFF = ("-p", "no:concurrency")
TEST = """\
def test_{index}():
    assert {index} == {index}
"""


def write_suite(directory: Path, tests: int) -> None:
    (directory / "pytest.ini").write_text("[pytest]\n")
    per_file = max(1, tests // FILES)
    written = 0
    number = 0
    while written < tests:
        count = min(per_file, tests - written)
        body = "\n\n".join(TEST.format(index=written + i) for i in range(count))
        (directory / f"test_trivial_{number:02d}.py").write_text(body)
        written += count
        number += 1


@dataclass(frozen=True)
class Setup:
    """How every child pytest runs: extra arguments and the environment."""

    extra_args: tuple[str, ...] = ()
    pycache: Path | None = None  # a private bytecode cache; None: the environment's setting

    def command(self, plugin: bool) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pytest",
            *BASE_ARGS,
            *self.extra_args,
            *(() if plugin else PLUGIN_OFF),
        ]

    def env(self) -> dict[str, str]:
        """The environment without our settings and pytest's addopts; with a private
        bytecode cache unless told otherwise, as on a user's machine (this one may set
        PYTHONDONTWRITEBYTECODE, which makes every run recompile and re-rewrite every
        plugin module)."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PYTEST_CONCURRENCY_", "PYTEST_ADDOPTS", "PYTEST_PLUGINS"))
        }
        if self.pycache is not None:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        return env


def other_plugins_off() -> tuple[str, ...]:
    """``-p no:NAME`` for every installed pytest plugin but ours (``--bare``)."""
    names = {entry.name for entry in importlib.metadata.entry_points(group="pytest11")}
    return tuple(arg for name in sorted(names - {"concurrency"}) for arg in ("-p", f"no:{name}"))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(setup: Setup, directory: Path, plugin: bool, tests: int) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one pytest run in a fresh interpreter."""
    cpu = children_cpu()
    start = time.perf_counter()
    done = subprocess.run(
        setup.command(plugin), cwd=directory, capture_output=True, text=True, env=setup.env()
    )
    elapsed = time.perf_counter() - start
    cpu = children_cpu() - cpu
    if done.returncode != 0 or f"{tests} passed" not in done.stdout:
        raise SystemExit(
            f"unmarked_suite: pytest exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return elapsed, cpu


def check_arms(setup: Setup, directory: Path) -> None:
    """The installed arm loads our plugin and the other does not (its marker is the witness)."""
    for plugin in (True, False):
        done = subprocess.run(
            [*setup.command(plugin), "--markers"],
            cwd=directory,
            capture_output=True,
            text=True,
            env=setup.env(),
        )
        if ("@pytest.mark.concurrent" in done.stdout) != plugin:
            raise SystemExit(
                f"unmarked_suite: the arm with plugin={plugin} is not what it "
                f"claims:\n{done.stdout}\n{done.stderr}"
            )


Times = dict[bool, list[tuple[float, float]]]  # plugin installed? -> (wall, cpu) per run


def measure(setup: Setup, directory: Path, reps: int, tests: int) -> Times:
    times: Times = {True: [], False: []}
    check_arms(setup, directory)
    for plugin in (True, False):  # warm-up: file cache, bytecode cache
        run_once(setup, directory, plugin, tests)
    for rep in range(reps):
        order = (True, False) if rep % 2 == 0 else (False, True)
        for plugin in order:
            times[plugin].append(run_once(setup, directory, plugin, tests))
        print(
            f"  repetition {rep + 1}/{reps}: with {times[True][-1][0]:.2f}s, "
            f"without {times[False][-1][0]:.2f}s (wall)",
            file=sys.stderr,
            flush=True,
        )
    return times


def instructions(setup: Setup, directory: Path, plugin: bool) -> int:
    """Instructions one pytest run executes, counted by cachegrind (no cache simulation)."""
    env = {**setup.env(), "PYTHONHASHSEED": "0"}
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        *setup.command(plugin),
    ]
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, env=env)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"unmarked_suite: valgrind exited {done.returncode}:\n{done.stderr}")
    return int(found.group(1).replace(",", ""))


def instruction_lines(setup: Setup, directory: Path) -> list[str]:
    if shutil.which("valgrind") is None:
        return ["instructions: valgrind is not installed; no count"]
    counts = {plugin: instructions(setup, directory, plugin) for plugin in (True, False)}
    ratio = counts[True] / counts[False]
    verdict = "met" if ratio - 1 <= TARGET else "NOT met"
    return [
        "instructions executed, one run each under cachegrind, PYTHONHASHSEED=0:",
        "",
        f"| plugin installed | -p no:concurrency | with / without | target ≤ {1 + TARGET:.2f} |",
        "|---:|---:|---:|---|",
        f"| {counts[True]:,} | {counts[False]:,} | {ratio:.4f} | {verdict} |",
    ]


# -- where the plugin spends its time -------------------------------------------------------

PER_TEST_HOOKS = (
    "pytest_runtest_protocol",
    "pytest_runtest_logstart",
    "pytest_runtest_setup",
    "pytest_runtest_call",
    "pytest_pyfunc_call",
    "pytest_runtest_teardown",
    "pytest_runtest_makereport",
    "pytest_runtest_logreport",
    "pytest_runtest_logfinish",
    "pytest_report_teststatus",
    "pytest_itemcollected",
    "pytest_collection_modifyitems",
)
PHASES = ("setup", "call", "teardown")
IMPORT_SNIPPET = (
    "import time, pytest; start = time.process_time(); import pytest_concurrency.plugin; "
    "print(time.process_time() - start)"
)


def import_cost(setup: Setup, repeats: int = 5) -> float:
    """CPU seconds to import our plugin in a fresh interpreter that has imported pytest (an
    upper bound: in a real run other plugins may already have imported some of the same
    standard modules)."""
    times = []
    for _ in range(repeats + 1):  # the first one fills the bytecode cache
        done = subprocess.run(
            [sys.executable, "-c", IMPORT_SNIPPET],
            capture_output=True,
            text=True,
            check=True,
            env=setup.env(),
        )
        times.append(float(done.stdout.strip()))
    return statistics.median(times[1:])


class HookTimer:
    """Collects the suite in this process, then times each of our per-test hook functions
    called directly on the real items (no pluggy dispatch, no cProfile)."""

    def __init__(self, repeats: int) -> None:
        self.repeats = repeats
        self.rows: list[tuple[str, int, float]] = []  # hook, calls per test, µs per test
        self.first_extra = 0.0  # seconds: first pass minus the best (lazy imports, caches)

    def pytest_collection_finish(self, session: Any) -> None:
        import pytest
        from _pytest.reports import TestReport
        from _pytest.runner import CallInfo

        items = list(session.items)
        calls = {
            phase: CallInfo.from_call(lambda: None, when=phase)  # type: ignore[arg-type]
            for phase in PHASES
        }
        reports = {
            item: {phase: TestReport.from_item_and_call(item, calls[phase]) for phase in PHASES}
            for item in items
        }
        for hook_name in PER_TEST_HOOKS:
            hook = getattr(session.config.hook, hook_name, None)
            for impl in hook.get_hookimpls() if hook is not None else ():
                if not is_ours(impl.plugin):
                    continue
                per_item = hook_name != "pytest_collection_modifyitems"
                phases = (
                    PHASES
                    if hook_name
                    in (
                        "pytest_runtest_makereport",
                        "pytest_runtest_logreport",
                        "pytest_report_teststatus",
                    )
                    else (None,)
                )

                def one_pass(
                    impl: Any = impl,
                    phases: tuple[str | None, ...] = phases,
                    per_item: bool = per_item,
                ) -> None:
                    if not per_item:
                        call_impl(
                            impl,
                            {"session": session, "config": session.config, "items": list(items)},
                        )
                        return
                    for item in items:
                        for phase in phases:
                            report = reports[item][phase or "call"]
                            call_impl(
                                impl,
                                {
                                    "item": item,
                                    "pyfuncitem": item,
                                    "nextitem": None,
                                    "call": calls[phase or "call"],
                                    "report": report,
                                    "nodeid": item.nodeid,
                                    "location": item.location,
                                    "config": session.config,
                                    "session": session,
                                },
                                result=report,
                            )

                first = timed(one_pass)
                best = min([first, *(timed(one_pass) for _ in range(self.repeats - 1))])
                self.first_extra += first - best
                label = f"{hook_name} ({plugin_label(impl.plugin)})"
                self.rows.append((label, len(phases) if per_item else 0, best / len(items) * 1e6))
        session.items[:] = []  # collection only: nothing runs
        del pytest


def plugin_module(plugin: object) -> str:
    name = getattr(plugin, "__name__", None) if isinstance(plugin, types.ModuleType) else None
    return name or type(plugin).__module__


def is_ours(plugin: object) -> bool:
    return plugin_module(plugin).split(".")[0] == PACKAGE_DIR


def plugin_label(plugin: object) -> str:
    module = plugin_module(plugin).rsplit(".", 1)[-1]
    if isinstance(plugin, types.ModuleType):
        return f"{module}.py"
    return f"{module}.py {type(plugin).__name__}"


def call_impl(impl: Any, available: dict[str, Any], result: Any = None) -> None:
    arguments = {name: available[name] for name in impl.argnames}
    outcome = impl.function(**arguments)
    if impl.wrapper or impl.hookwrapper:  # a generator: run it around a fake inner result
        import pluggy

        next(outcome)
        with contextlib.suppress(StopIteration):
            outcome.send(result if impl.wrapper else pluggy.Result(result, None))


def timed(function: Any) -> float:
    """CPU time, not wall time: on a shared machine time spent descheduled is not ours."""
    start = time.process_time()
    function()
    return time.process_time() - start


def hook_costs(setup: Setup, directory: Path, repeats: int = 5) -> HookTimer:
    import pytest

    timer = HookTimer(repeats)
    if setup.pycache is not None:  # the children's warm bytecode cache, for lazy imports too
        sys.dont_write_bytecode = False
        sys.pycache_prefix = str(setup.pycache)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pytest.main(
            [
                str(directory),
                "-c",
                str(directory / "pytest.ini"),
                "--rootdir",
                str(directory),
                *BASE_ARGS,
                *setup.extra_args,
            ],
            plugins=[timer],
        )
    return timer


def estimate(setup: Setup, directory: Path, tests: int, baseline_cpu: float) -> list[str]:
    """Our cost measured piece by piece, without a profiler, as a share of the suite's CPU."""
    imported = import_cost(setup)
    timer = hook_costs(setup, directory)
    rows = timer.rows
    per_test = sum(cost for _, _, cost in rows)
    total = imported + timer.first_extra + per_test * 1e-6 * tests
    lines = [
        "our cost piece by piece, CPU time, no profiler (hook functions called directly on "
        "the collected items, best of 5; pluggy's dispatch to them is not included):",
        "",
        "| piece | calls per test | µs per test | ms for the suite | share of the suite's "
        "CPU without the plugin |",
        "|---|---:|---:|---:|---:|",
        f"| import pytest_concurrency.plugin (after pytest) | — | — | {imported * 1e3:.1f} | "
        f"{imported / baseline_cpu:.2%} |",
        f"| one-off work in the first test's hooks (lazy imports) | — | — | "
        f"{timer.first_extra * 1e3:.1f} | {timer.first_extra / baseline_cpu:.2%} |",
    ]
    for label, calls, cost in sorted(rows, key=lambda row: -row[2]):
        ms = cost * tests / 1e3
        lines.append(
            f"| {label} | {calls or 'once'} | {cost:.2f} | {ms:.1f} | "
            f"{ms / 1e3 / baseline_cpu:.2%} |"
        )
    lines.append(
        f"| **total** | | {per_test:.2f} | {total * 1e3:.1f} | **{total / baseline_cpu:.2%}** |"
    )
    return lines


def profile(setup: Setup, directory: Path, top: int) -> list[str]:
    out = directory / "suite.prof"
    command = [sys.executable, "-m", "cProfile", "-o", str(out), *setup.command(True)[1:]]
    subprocess.run(
        command, cwd=directory, capture_output=True, text=True, env=setup.env(), check=True
    )
    entries = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    total = max(value[3] for value in entries.values())

    def ours(key: tuple[str, int, str]) -> bool:
        return f"{os.sep}{PACKAGE_DIR}{os.sep}" in key[0]

    def name(key: tuple[str, int, str]) -> str:
        filename, line, function = key
        tail = filename.split(f"{os.sep}{PACKAGE_DIR}{os.sep}", 1)[-1]
        return f"{tail}:{line}({function})"

    own = {key: value for key, value in entries.items() if ours(key)}
    own_tottime = sum(value[2] for value in own.values())
    # Entry points: our functions that code outside our package calls (hooks, fixtures).
    # Module bodies are left out: every import is called from importlib, so nested imports
    # would count twice; the import of plugin.py covers everything imported at start-up.
    roots = {
        key: value
        for key, value in own.items()
        if key[2] != "<module>" and any(not ours(caller) for caller in value[4])
    }
    hooks = sum(value[3] for value in roots.values())
    modules = [value[3] for key, value in own.items() if key[2] == "<module>"]
    plugin_import = max(modules, default=0.0)
    lines = [
        f"cProfile of the installed arm ({total:.2f}s profiled; the profiler inflates every "
        "cost, read the shares):",
        "",
        f"- in our hooks and fixtures, with what they call: {hooks * 1e3:.1f} ms "
        f"({hooks / total:.2%})",
        f"- importing our package at start-up (plugin.py with all it imports): "
        f"{plugin_import * 1e3:.1f} ms ({plugin_import / total:.2%})",
        f"- in our own functions' bodies only: {own_tottime * 1e3:.1f} ms "
        f"({own_tottime / total:.2%})",
        "",
        f"top {top} of our entry points by cumulative time:",
        "",
        "| function | calls | cumulative ms | own ms |",
        "|---|---:|---:|---:|",
    ]
    for key, (_, calls, tottime, cumtime, _) in sorted(roots.items(), key=lambda item: -item[1][3])[
        :top
    ]:
        lines.append(f"| {name(key)} | {calls} | {cumtime * 1e3:.1f} | {tottime * 1e3:.1f} |")
    lines += [
        "",
        f"top {top} of our functions by own time (module bodies included):",
        "",
        "| function | calls | own ms | cumulative ms |",
        "|---|---:|---:|---:|",
    ]
    for key, (_, calls, tottime, cumtime, _) in sorted(own.items(), key=lambda item: -item[1][2])[
        :top
    ]:
        lines.append(f"| {name(key)} | {calls} | {tottime * 1e3:.1f} | {cumtime * 1e3:.1f} |")
    return lines


# -- reporting --------------------------------------------------------------------------------


def summarize(times: Times, index: int) -> str:
    """One table row: medians and spread of each arm, ratio of medians, paired ratio."""
    with_plugin = [run[index] for run in times[True]]
    without = [run[index] for run in times[False]]
    ratio = statistics.median(with_plugin) / statistics.median(without)
    paired = statistics.median(a / b for a, b in zip(with_plugin, without, strict=True))
    verdict = "met" if ratio - 1 <= TARGET else "NOT met"
    return f"{spread(with_plugin)} | {spread(without)} | {ratio:.3f} | {paired:.3f} | {verdict}"


def spread(values: list[float]) -> str:
    median = statistics.median(values)
    if len(values) < 4:
        return f"{median:.3f} ({min(values):.3f}-{max(values):.3f})"
    low, _, high = statistics.quantiles(values, n=4)
    return f"{median:.3f} ({low:.3f}-{high:.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--reps", type=int, help="repetitions per arm (default 7, quick 3)")
    parser.add_argument("--tests", type=int, help="tests in the suite (default 2000, quick 200)")
    parser.add_argument("--top", type=int, default=10, help="rows of each profile table")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count each arm's instructions under valgrind's cachegrind",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="disable every other installed pytest plugin in both arms",
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep the environment's bytecode setting instead of a private "
        "bytecode cache (PYTHONPYCACHEPREFIX)",
    )
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    tests = args.tests or (200 if args.quick else 2000)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unmarked-suite-") as tmp:
        directory = Path(tmp)
        write_suite(directory, tests)
        setup = Setup(
            extra_args=other_plugins_off() if args.bare else (),
            pycache=None if args.no_bytecode_cache else directory / "pycache",
        )
        times = measure(setup, directory, reps, tests)
        baseline_cpu = statistics.median(run[1] for run in times[False])
        estimate_lines = estimate(setup, directory, tests, baseline_cpu)
        profile_lines = [] if args.no_profile else profile(setup, directory, args.top)
        count_lines = instruction_lines(setup, directory) if args.instructions else []
    total = time.perf_counter() - started

    rows = {metric: summarize(times, index) for index, metric in enumerate(("wall", "CPU"))}
    print(
        f"machine: {os.cpu_count()} CPUs online, usable {len(os.sched_getaffinity(0))}; "
        f"{cpu_model()}; Python {platform.python_version()}"
    )
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print(f"each run: {' '.join(['python', *setup.command(True)[1:]])} [-p no:concurrency]")
    print(
        "bytecode: "
        + (
            "as the environment says"
            if setup.pycache is None
            else "a private cache (PYTHONPYCACHEPREFIX), warmed before timing"
        )
    )
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {tests} tests; {reps} interleaved "
        f"repetitions; {total:.0f}s in all"
    )
    print()
    print(
        "| time | plugin installed, median s (p25-p75) | -p no:concurrency, median s "
        "(p25-p75) | with / without | paired ratios, median | target ≤ "
        f"{1 + TARGET:.2f} |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for metric, row in rows.items():
        print(f"| {metric} | {row} |")
    print()
    if count_lines:
        print()
        print("\n".join(count_lines))
    print()
    print("\n".join(estimate_lines))
    if profile_lines:
        print()
        print("\n".join(profile_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
