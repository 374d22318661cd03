"""Acceptance: asyncio mode's cancellation injection (issue 19), opt-in and seeded."""

from __future__ import annotations

import json
import re

import pytest

from pytest_concurrency import messages

POOL = """
import asyncio
import pytest


class Pool:
    def __init__(self):
        self.in_use = 0

    async def use(self):
        self.in_use += 1  # state updated before the await ...
        await asyncio.sleep(0.01)
        self.in_use -= 1  # ... restored after it: not when the task is cancelled there


class SafePool(Pool):
    async def use(self):
        self.in_use += 1
        try:
            await asyncio.sleep(0.01)
        finally:
            self.in_use -= 1


async def released(concurrency, pool_type):
    for run in concurrency.runs(50):
        pool = pool_type()
        await run(pool.use, workers=3)
        assert pool.in_use == 0, f"{pool.in_use} still in use"


async def test_buggy_harness(concurrency):
    await released(concurrency, Pool)


async def test_fixed_harness(concurrency):
    await released(concurrency, SafePool)


class Outbox:
    def __init__(self):
        self.queued = []
        self.sent = 0

    async def send(self, message):
        self.queued.append(message)  # half of the update ...
        await asyncio.wait_for(asyncio.sleep(0.5), 1)  # the network: well inside its timeout
        self.sent += 1  # ... the other half, skipped when the timeout expires


class SafeOutbox(Outbox):
    async def send(self, message):
        await asyncio.wait_for(asyncio.sleep(0.5), 1)
        self.queued.append(message)
        self.sent += 1


async def sent_or_not(outbox):
    try:
        await outbox.send("hello")
    except asyncio.TimeoutError:  # TimeoutError on 3.11+, not yet on 3.10
        pass  # the caller gives up: fine, as long as nothing is half sent
    assert outbox.sent == len(outbox.queued)


@pytest.mark.concurrent(workers=2, runs=50)
async def test_buggy_timeout():
    await sent_or_not(Outbox())


@pytest.mark.concurrent(workers=2, runs=50)
async def test_fixed_timeout():
    await sent_or_not(SafeOutbox())
"""

SEED = "--concurrency-seed=7"
CANCELLED_LINE = messages.INJECTED_CANCEL.format(
    worker="*", where="test_pool.py:* in use: await asyncio.sleep(0.01)"
)
EARLY_LINE = (
    messages.INJECTED_TIMEOUT.split("{where}")[0]
    + "test_pool.py:* in send: await asyncio.wait_for(*"
)


def test_a_cancellation_safety_bug_is_found_with_injection_and_not_without(pytester, run) -> None:
    """With ``--concurrency-inject=cancel`` the state left half-updated by a cancellation at an
    ``await`` (the harness's check) and by a timeout that expired early (the body's assert)
    fails, each report naming the line where it was injected, and the fixed twins pass; with
    injection off (the default) nothing is reported."""
    pytester.makepyfile(test_pool=POOL)
    off = run(SEED)
    off.assert_outcomes(passed=4)
    on = run("--concurrency-inject=cancel", SEED)  # one seed, one schedule: found every time
    on.assert_outcomes(passed=2, failed=2)
    on.stdout.fnmatch_lines(
        ["*FAILED after run * the check after the run failed*", "*" + CANCELLED_LINE]
    )
    on.stdout.fnmatch_lines(["*RACE DETECTED in run *", "*" + EARLY_LINE])
    assert "--concurrency-inject=cancel" in on.stdout.str()  # the reproduction line carries it


def test_the_printed_line_injects_the_same_again(pytester, run) -> None:
    pytester.makepyfile(test_pool=POOL)
    first = run("--concurrency-inject=cancel", "-k", "buggy_harness", SEED)
    first.assert_outcomes(failed=1)
    line = re.search(r"reproduce: pytest (\S+ --concurrency-seed=\d+ .*)", first.stdout.str())
    assert line is not None
    again = run(*line.group(1).split())
    again.assert_outcomes(failed=1)
    injected = [text for text in first.stdout.lines if "injected:" in text]
    assert injected and injected == [t for t in again.stdout.lines if "injected:" in t]


def test_a_bad_injection_names_where_it_came_from(pytester, run) -> None:
    pytester.makepyfile(test_pool=POOL)
    result = run("--concurrency-inject=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--concurrency-inject=sometimes*off, cancel*"])


def test_the_json_report_lists_the_failing_runs_injections(pytester, run) -> None:
    """Each asyncio entry carries its clock; a failed one, the injections of its failing run,
    each with its run, worker, file, line and kind, as its report names them."""
    pytester.makepyfile(test_pool=POOL)
    on = run("--concurrency-inject=cancel", SEED, "--concurrency-json=report.json")
    on.assert_outcomes(passed=2, failed=2)
    tests = {
        entry["nodeid"].split("::")[-1]: entry
        for entry in json.loads((pytester.path / "report.json").read_text())["tests"]
    }
    source = (pytester.path / "test_pool.py").read_text().splitlines()
    for name, kind, line in (
        ("test_buggy_harness", "cancel", "await asyncio.sleep(0.01)"),
        ("test_buggy_timeout", "timeout", "await asyncio.wait_for(asyncio.sleep(0.5), 1)"),
    ):
        entry = tests[name]
        assert entry["clock"] == "virtual" and entry["injections"], entry
        for injected in entry["injections"]:
            assert injected["run"] == entry["failing_run"]
            assert injected["kind"] == kind and injected["file"].endswith("test_pool.py")
            assert source[injected["line"] - 1].strip().startswith(line)
            assert 0 <= injected["worker"] < entry["workers"]
    for name in ("test_fixed_harness", "test_fixed_timeout"):
        assert tests[name]["clock"] == "virtual" and tests[name]["injections"] == []
        assert tests[name]["fails_without_reordering"] is None
