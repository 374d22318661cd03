"""--concurrency-all on an existing suite finds the races its plain tests can show."""

from __future__ import annotations

BUS = """
HANDLERS = {}

def subscribe(key, handler):
    HANDLERS[key] = handler

def unsubscribe(key):
    HANDLERS.pop(key, None)

def publish(event):
    for key, handler in HANDLERS.items():   # iterates while others subscribe
        handler(event)

def publish_safely(event):
    for key, handler in list(HANDLERS.items()):   # iterates a snapshot
        handler(event)
"""

PLAIN_TEST = """
import bus

def test_publish_reaches_subscriber():
    key = object()
    got = []
    bus.subscribe(key, got.append)
    bus.{publish}("hello")
    bus.unsubscribe(key)
    assert "hello" in got
"""


def test_run_all_finds_iterate_while_mutating_in_a_plain_suite(pytester, run) -> None:
    pytester.makepyfile(bus=BUS)
    pytester.makepyfile(
        test_racy=PLAIN_TEST.format(publish="publish"),
        test_fixed=PLAIN_TEST.format(publish="publish_safely"),
    )
    assert run().ret == 0  # the plain suite passes on its own
    # the interleaving itself (the data-race watch reports it earlier, tests/test_data_races.py),
    # over a fixed count (the long hunt), not the audit's allowance of seconds: a loaded
    # machine must not make the race slip through
    result = run(
        "--concurrency-all",
        "--concurrency-seed=1",
        "--concurrency-runs=100",
        "--concurrency-data-races=off",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*RuntimeError: dictionary * during iteration*",  # size or keys changed: timing
            "*RuntimeError at bus.py:* (* call*",
            "*reproduce: pytest test_racy.py::test_publish_reaches_subscriber --concurrency-seed=1"
            " --concurrency-runs=100 --concurrency-data-races=off --concurrency-all",
        ]
    )
