"""A rare race, hunted on one worker and sharded over pytest-xdist: wall time to first detection.

The race: a ledger whose payments take a lock, except on a rare fast path (one run's input in
about ``--rarity`` takes it) that reads the balance, checks it and pays without the lock; only
on that path, and only when the two workers interleave there, does the ledger pay out twice.
Every worker first does about half a millisecond of CPU work that holds the GIL (the cost of a
real request), so that one pytest process hunts on one core and a second core can only help
through a second process.

Two arms, the same budget of ``--runs`` runs of the same test, for each of ``--seeds`` seeds,
interleaved (the order of the two arms alternates from seed to seed):

* ``one``:    ``pytest test_ledger.py --concurrency-seed=S``: the whole hunt in one process;
* ``shards``: ``pytest -n 2 --concurrency-shards=2 --concurrency-seed=S``: two items with
  disjoint seed streams, half the runs each, on two xdist workers.

Time to first detection is the wall time from starting pytest to the controller receiving
the first failed test report (a conftest in the project writes it down); a hunt that finds
nothing counts its whole wall time and is reported as a miss. xdist's own start-up (two worker
interpreters) is part of the sharded arm's time. Which input stream reaches the rare path
first is luck, so detection times scatter widely; the hunting rate behind them is measured
apart, twice per arm (one, shards, shards, one), on a race-free twin of the test: its
``--clean-runs`` runs over the session's wall time, start-up included.

    python benchmarks/shards.py --seeds 12 --runs 30000 --rarity 1000 --clean-runs 6000

Run from the repository root with the venv that has pytest-xdist; prints a Markdown table.
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
import tempfile
import time
from pathlib import Path

TEST = """
import random
import threading

import pytest

RARITY = {rarity}
RUNS = {runs}
RACY = {racy}  # False: the clean twin, for the hunting rate


class Ledger:
    def __init__(self):
        self.balance = 100
        self.paid = 0
        self.lock = threading.Lock()

    def pay(self, amount, fast):
        if fast:  # the rare path forgets the lock: check, then act on what it read
            seen = self.balance
            if seen >= amount:
                self.paid += amount
                self.balance = seen - amount
        else:
            with self.lock:
                if self.balance >= amount:
                    self.balance -= amount
                    self.paid += amount


def request_work(n=50_000):
    return sum(range(n))  # C code: not traced, and it holds the GIL (one core per process)


def test_ledger_pays_at_most_the_balance(concurrency):
    for run in concurrency.runs(RUNS):
        rng = random.Random(f"{{concurrency.seed}}-{{run.index}}")
        fast = RACY and rng.randrange(RARITY) == 0
        ledger = Ledger()

        def customer():
            request_work()
            ledger.pay(60, fast)

        run(customer, workers=2)
        assert ledger.paid <= 100, f"paid out {{ledger.paid}} from a balance of 100"
"""

CONFTEST = """
import os
import time

_DONE = []


def pytest_runtest_logreport(report):
    if report.failed and not _DONE and not hasattr(report, "wasxfail"):
        _DONE.append(True)
        with open(os.environ["SHARDS_DETECTED"], "w") as out:
            out.write(repr(time.time()))
"""

ARMS = {
    "one": (),
    "shards": ("-n", "2", "--concurrency-shards=2"),
}
SESSION_TIMEOUT = 600.0


def run_arm(
    project: Path, arm: str, seed: int, module: str = "test_ledger.py"
) -> tuple[float, bool, float]:
    """(seconds to first detection or to the end, found?, runs per second of the session)."""
    detected = project / f"detected-{arm}-{seed}"
    detected.unlink(missing_ok=True)
    report = project / f"report-{arm}-{seed}.json"
    env = {**os.environ, "SHARDS_DETECTED": str(detected)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-p",
        "no:run-parallel",
        f"--concurrency-seed={seed}",
        f"--concurrency-json={report}",
        *ARMS[arm],
        module,
    ]
    start = time.time()
    result = subprocess.run(
        command,
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT,
        check=False,
    )
    end = time.time()
    if result.returncode not in (0, 1) or not report.exists():
        raise RuntimeError(
            f"{arm} seed {seed}: pytest exited {result.returncode}\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    runs = sum(entry["runs_done"] for entry in json.loads(report.read_text())["tests"])
    rate = runs / (end - start)
    if detected.exists():
        return float(detected.read_text()) - start, True, rate
    return end - start, False, rate


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=30000, help="the budget, in runs")
    parser.add_argument(
        "--rarity", type=int, default=1000, help="one input in this many takes the racy path"
    )
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument(
        "--clean-runs",
        type=int,
        default=4000,
        help="runs of the race-free twin that measure each arm's hunting rate",
    )
    args = parser.parse_args()

    load_before = load_average()
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
    clean: dict[str, list[float]] = {arm: [] for arm in ARMS}
    found: dict[str, int] = dict.fromkeys(ARMS, 0)
    with tempfile.TemporaryDirectory(prefix="shards-bench-") as directory:
        project = Path(directory)
        (project / "test_ledger.py").write_text(
            TEST.format(rarity=args.rarity, runs=args.runs, racy=True)
        )
        (project / "test_clean.py").write_text(
            TEST.format(rarity=args.rarity, runs=args.clean_runs, racy=False)
        )
        for arm in [*ARMS, *reversed(ARMS)]:  # the hunting rate, on the race-free twin
            seconds, _, rate = run_arm(project, arm, 0, "test_clean.py")
            clean[arm].append(rate)
            print(
                f"clean twin, {args.clean_runs} runs: {arm} {seconds:6.2f}s ({rate:.0f} runs/s)",
                flush=True,
            )
        (project / "conftest.py").write_text(CONFTEST)
        (project / "pytest.ini").write_text("[pytest]\n")
        for number in range(args.seeds):
            seed = args.first_seed + number
            order = list(ARMS) if number % 2 == 0 else list(reversed(ARMS))
            row = []
            for arm in order:
                seconds, hit, rate = run_arm(project, arm, seed)
                times[arm].append(seconds)
                rates[arm].append(rate)
                found[arm] += hit
                row.append(
                    f"{arm} {seconds:6.2f}s {'found' if hit else 'MISSED'} ({rate:.0f} runs/s)"
                )
            print(f"seed {seed:3d}: " + "; ".join(row), flush=True)

    ratios = [one / shards for one, shards in zip(times["one"], times["shards"], strict=True)]
    print()
    print(
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{platform.python_implementation()} {platform.python_version()}; "
        f"{os.cpu_count()} CPUs; load average before {load_before}, after {load_average()}"
    )
    print(
        f"command: python benchmarks/shards.py --seeds {args.seeds} --runs {args.runs} "
        f"--rarity {args.rarity} --first-seed {args.first_seed} "
        f"--clean-runs {args.clean_runs}"
    )
    print()
    print(
        "| arm | found | median time to detection | mean | min | max | hunting rate, clean twin |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arm, extra in ARMS.items():
        values = times[arm]
        label = "one worker" if not extra else "`" + " ".join(extra) + "`"
        print(
            f"| {label} | {found[arm]} of {len(values)} | {statistics.median(values):.2f} s | "
            f"{statistics.mean(values):.2f} s | {min(values):.2f} s | {max(values):.2f} s | "
            f"{' and '.join(f'{rate:.0f}' for rate in clean[arm])} runs/s |"
        )
    print()
    print(
        f"per-seed ratio one/shards: median {statistics.median(ratios):.2f}, "
        f"sharded faster on {sum(ratio > 1 for ratio in ratios)} of {len(ratios)} seeds"
    )


if __name__ == "__main__":
    main()
