"""What ``--concurrency-isolate`` costs per concurrent test: the fork, the reports written and
read back, the reaping.

A generated suite of TESTS trivial concurrent tests (2 workers, 5 runs each) is run by
``python -m pytest`` with and without ``--concurrency-isolate``, in turn, round after round,
so that both see the same noise. The figure is the median over rounds of the paired
difference of wall times, divided by the number of tests; and the median paired ratio.

    python benchmarks/isolate_cost.py            # about a minute
    python benchmarks/isolate_cost.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import cpu_model

TEST = """
@pytest.mark.concurrent(workers=2, runs=5)
def test_{index}():
    pass
"""


def write_suite(directory: Path, tests: int) -> Path:
    body = "import pytest\n" + "".join(TEST.format(index=index) for index in range(tests))
    path = directory / "test_isolate_cost.py"
    path.write_text(body)
    (directory / "pytest.ini").write_text("[pytest]\n")
    return path


def session_seconds(directory: Path, *extra: str) -> float:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio"]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "-p", "no:randomly", *extra],
        cwd=directory,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the suite failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tests", type=int, default=100)
    args = parser.parse_args()
    rounds = 3 if args.quick else 9
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        write_suite(directory, args.tests)
        session_seconds(directory)  # warm the file cache and the bytecode
        plain, isolated = [], []
        for _ in range(rounds):
            plain.append(session_seconds(directory))
            isolated.append(session_seconds(directory, "--concurrency-isolate"))
    per_test = [(i - p) / args.tests * 1000 for p, i in zip(plain, isolated, strict=True)]
    ratios = [i / p for p, i in zip(plain, isolated, strict=True)]
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    print(f"{args.tests} concurrent tests (2 workers, 5 runs), {rounds} rounds, interleaved")
    print(f"session without isolation: median {statistics.median(plain):.2f} s")
    print(f"session with --concurrency-isolate: median {statistics.median(isolated):.2f} s")
    print(
        f"isolation per test: median {statistics.median(per_test):.2f} ms "
        f"(range {min(per_test):.2f}-{max(per_test):.2f}); "
        f"session ratio {statistics.median(ratios):.2f}x"
    )


if __name__ == "__main__":
    main()
