"""CPU-bound work in pure Python: threads do not scale (the GIL), processes do.

The tasks people cite when they ask "why are my threads not faster": estimating pi by Monte
Carlo, factoring numbers, computing fractal points, parsing JSON, processing text. Each is a
unit of work the ``scaling`` fixture calls in 1..N threads and in 1..N processes; the verdict
says whether it scales with cores, and if not, why.

On a quiet machine with a GIL the verdict is ``gil-bound``: threads stay at about one core of
CPU however many there are, while processes scale. A shared or busy machine may not supply the
cores the processes ask for, and then the verdict says so (``environment-limited``, or
``inconclusive`` when the interval straddles the threshold) instead of blaming the code. So
the tests assert what holds on any machine with a GIL, busy or not: threads never gain from
more workers, and never get more than about one core of CPU time.

On a free-threaded build (3.13t, 3.14t) the same tests assert the opposite: the threads are not
held by a GIL. The verdict is ``scales`` where the machine gives the second core, and
``environment-limited`` or ``inconclusive`` where it does not; never ``gil-bound``. Run
``pytest -s`` to see each table and its reasons.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter

import pytest

GIL_ENABLED = getattr(sys, "_is_gil_enabled", lambda: True)()
THREADS_GAINED = {"scales", "io-bound"}
"""The verdicts that would mean threads got faster with more workers."""
NOT_HELD_BY_A_GIL = ["scales", "environment-limited", "inconclusive"]
"""Free-threaded build: threads scale, or the machine did not give the cores to tell."""
HELD_BY_THE_GIL = ["gil-bound", "environment-limited", "inconclusive", "contended", "serial"]
"""GIL build: any verdict but "scales" and "io-bound"; threads do not gain."""
BUDGET = 2.5
"""Seconds per measurement: enough for 5+ interleaved rounds of every worker count."""


def estimate_pi(samples: int = 20_000) -> float:
    rng = random.Random(12345)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4 * inside / samples


def factorize(n: int = 600_851_475_143) -> list[int]:
    factors, divisor = [], 2
    while divisor * divisor <= n:
        while n % divisor == 0:
            factors.append(divisor)
            n //= divisor
        divisor += 1
    return [*factors, n] if n > 1 else factors


def mandelbrot_points(width: int = 60, height: int = 30, limit: int = 40) -> int:
    """How many points of a width x height grid are in the Mandelbrot set."""
    inside = 0
    for row in range(height):
        for column in range(width):
            c = complex(-2.0 + 2.5 * column / width, -1.0 + 2.0 * row / height)
            z = 0j
            for _ in range(limit):
                z = z * z + c
                if abs(z) > 2.0:
                    break
            else:
                inside += 1
    return inside


ORDERS_JSON = json.dumps(
    [{"id": i, "items": [{"sku": f"sku-{j}", "qty": j} for j in range(5)]} for i in range(200)]
)


def parse_json(document: str = ORDERS_JSON) -> int:
    return sum(len(order["items"]) for order in json.loads(document))


TEXT = " ".join(["The quick brown fox jumps over the lazy dog, twice; then sleeps."] * 300)


def word_frequencies(text: str = TEXT) -> list[tuple[str, int]]:
    words = re.findall(r"[a-z]+", text.lower())
    return Counter(word for word in words if len(word) > 3).most_common(5)


@pytest.mark.parametrize(
    "task", [estimate_pi, factorize, mandelbrot_points, parse_json, word_frequencies]
)
def test_cpu_bound_work_in_threads(scaling, task):
    report = scaling(task, workers=2, budget=BUDGET)
    print(report.summary())
    if GIL_ENABLED:
        assert report.verdict not in THREADS_GAINED, report.summary()
        assert report.level("threads", 2).cores_used < 1.3, report.summary()  # one at a time
    else:
        assert report.verdict in NOT_HELD_BY_A_GIL, report.summary()


@pytest.mark.scaling(
    workers=2, budget=BUDGET, expect=HELD_BY_THE_GIL if GIL_ENABLED else NOT_HELD_BY_A_GIL
)
def test_the_body_is_the_unit_of_work():
    word_frequencies(TEXT[: len(TEXT) // 2])
