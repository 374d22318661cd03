"""User-facing text, as constants the tests import and check."""

from __future__ import annotations

MARKER_CONCURRENT = (
    "concurrent(workers=4, runs=100, mode='threads', seed=None, timeout=60, perturb=True, "
    "budget=None): run the test body in `workers` workers at once, `runs` times; fixtures are "
    "set up once and shared. mode is threads, processes or asyncio (implied by async def)."
)
MARKER_NOT_CONCURRENT = (
    "not_concurrent(reason=...): never run this test concurrently, even under "
    "--concurrency-all; it runs once, normally, and the summary says why."
)
POSITIONAL_MARKER_ARGS = (
    "pytest-concurrency: @pytest.mark.concurrent takes keyword arguments only, "
    "e.g. @pytest.mark.concurrent(workers=8, runs=100); got {args!r} on {nodeid}"
)
BAD_MARKER = "pytest-concurrency: {nodeid}: {error}"
NOT_A_FUNCTION = (
    "pytest-concurrency: {nodeid} is not a plain test function, so it cannot run concurrently"
)
SEED_LAST_MISSING = (
    "pytest-concurrency: --concurrency-seed=last found no seed from an earlier run "
    "(the pytest cache is empty or disabled); pass a number, e.g. --concurrency-seed=12345"
)
BARRIER_OUTSIDE_RUN = (
    "concurrency.barrier() was called outside a concurrent run: it is only defined inside a "
    "body run by @pytest.mark.concurrent or inside a callable given to run(...) of "
    "concurrency.runs()"
)
WORKER_OUTSIDE_RUN = (
    "concurrency.{name} is only defined inside a concurrent run (a body run by "
    "@pytest.mark.concurrent, or a callable given to run(...) of concurrency.runs())"
)
NESTED_RUN = (
    "pytest-concurrency: run(...) was called from inside a concurrent worker; concurrent runs "
    "cannot be nested. Call run(...) from the test body, between runs"
)
RUN_NEEDS_CALLABLES = (
    "pytest-concurrency: run(...) needs a callable: run(fn, workers=8) calls fn in 8 workers at "
    "once; run(f, g) runs one worker per callable"
)
RUN_WORKERS_WITH_ACTORS = (
    "pytest-concurrency: run(f, g, ...) runs one worker per callable; workers= only goes with "
    "a single callable, e.g. run(fn, workers=8)"
)
RUN_AFTER_LOOP = (
    "pytest-concurrency: this run object belongs to a finished iteration of concurrency.runs(); "
    "call it inside the for loop that produced it"
)
SERIAL_NOT_CONCURRENT = "marked not_concurrent"
SERIAL_UNSAFE_FIXTURE = "uses thread-unsafe fixture {names}"
SERIAL_WARNINGS = "uses {name} (warning filters are process-global)"
SERIAL_NOT_FUNCTION = "not a plain test function"
