"""A real race, found by perturbation, fails again when its printed reproduction line is rerun.

The race is a lost update with no call in its window (``self.n += 1``): on a GIL build plain
threads almost never interleave inside it, so finding it at all is the perturbation's doing, and
failing again is the seed's. The line is taken from the report exactly as a user would copy it,
and run in a fresh interpreter.
"""

from __future__ import annotations

import re
import shlex
import sys

import pytest

COUNTER = """
import pytest


class Counter:
    def __init__(self):
        self.n = 0

    def hit(self):
        self.n += 1  # read, add, write back: no call inside the window


@pytest.fixture
def counter():
    return Counter()


@pytest.mark.concurrent(workers=4, runs=200)
def test_hits_are_counted(counter, concurrency):
    before = counter.n
    concurrency.barrier()
    for _ in range(20):
        counter.hit()
    concurrency.barrier()
    assert counter.n == before + 4 * 20
    concurrency.barrier()
"""

REPRODUCE = re.compile(r"reproduce: (pytest \S+ --concurrency-seed=\d+.*)$", re.MULTILINE)
ORIGIN = re.compile(r"AssertionError at test_counter\.py:\d+")
REPLAYS = 3


def reproduce_line(result: pytest.RunResult) -> str:
    found = REPRODUCE.search(result.stdout.str())
    assert found is not None, result.stdout.str()
    return found.group(1)


def test_the_printed_line_replays_a_perturbation_race(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(test_counter=COUNTER)
    # the interleaving's replay, not the data-race watch's report (which may fail run 0
    # before any interleaving broke the count): the printed line carries the option
    first = run_subprocess("--concurrency-data-races=off")
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["* in run * of 200 (4 threads, seed *): * calls failed"])
    origin = ORIGIN.search(first.stdout.str())
    assert origin is not None, first.stdout.str()
    line = reproduce_line(first)
    command = shlex.split(line)
    assert command[0] == "pytest" and "--concurrency-data-races=off" in command
    for _ in range(REPLAYS):
        again = run_subprocess(*command[1:])
        again.assert_outcomes(failed=1)
        assert origin.group(0) in again.stdout.str()
        assert reproduce_line(again) == line  # the same seed, printed the same way


@pytest.mark.skipif(
    not getattr(sys, "_is_gil_enabled", lambda: True)(),
    reason="without the GIL plain threads interleave inside the window",
)
def test_without_perturbation_the_same_race_hides(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    """The control: what finds the race above is the perturbation, not luck of the OS scheduler."""
    pytester.makepyfile(test_counter=COUNTER.replace("runs=200", "runs=20"))
    run_subprocess(
        "--concurrency-perturb=false", "--concurrency-seed=1", "--concurrency-data-races=off"
    ).assert_outcomes(passed=1)  # the data-race watch finds it without the interleaving
