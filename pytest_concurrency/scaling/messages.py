"""The scaling room's user-facing text, as constants the tests import and check (the rest is
in :mod:`pytest_concurrency.messages`). Imports nothing."""

from __future__ import annotations

# -- the scaling marker and fixture (plugin/scaling_hooks.py) ----------------------------------
SCALING_SKIP_XDIST = (
    "scaling: measurements are unreliable under pytest-xdist (the other workers compete for "
    "the cores); run this test without -n, or pass force=True to measure anyway"
)
SCALING_SKIP_TRACER = (
    "scaling: measurements are unreliable under a tracer ({tracer}): it slows every line and "
    "serializes threads; run without it, or pass force=True to measure anyway"
)
SCALING_FORCED_XDIST = (
    "measured under pytest-xdist (force=True): other workers competed for the cores"
)
SCALING_FORCED_TRACER = (
    "measured under a tracer, {tracer} (force=True): timings are slowed and skewed"
)
SCALING_MARKER_COROUTINE = (
    "@pytest.mark.scaling on {nodeid}: the test is a coroutine function; the marker measures "
    "plain functions: call asyncio.run(...) inside a plain test, or use the scaling fixture"
)
SCALING_MARKER_NOT_FUNCTION = (
    "@pytest.mark.scaling on {nodeid}: only test functions can be measured"
)
SCALING_MARKER_USAGE = "@pytest.mark.scaling on {nodeid}: {error}"
SCALING_FIXTURE_ARGUMENTS_HINT = " (with the marker, the arguments are the test's fixture values)"

# -- scaling: settings of a measurement (scaling/plan.py) -------------------------------------
SCALING_MARKER_POSITIONAL = (
    "takes keyword arguments only, such as @pytest.mark.scaling(expect='scales'); "
    "got positional {args!r}"
)
SCALING_MARKER_UNKNOWN_KEY = "unknown argument {key!r}; use {choices}"
SCALING_BAD_MODE = "scaling: unknown mode {mode!r}; use one or both of {choices}."
SCALING_ASYNCIO_MODE = (
    "scaling: mode 'asyncio' runs every task on one thread, so it cannot use more cores; "
    "measure modes=('threads', 'processes')."
)
SCALING_NO_MODES = "scaling: modes= is empty; use one or both of {choices}."
SCALING_BAD_WORKERS = (
    "scaling: workers={value!r} is not usable; give the largest worker count as an integer "
    "from 2 to {limit}, or a list of worker counts from 1 to {limit} including one above 1."
)
SCALING_BAD_ROUNDS = (
    "scaling: rounds={value!r} is not usable; give an integer from {low} to {high}, "
    "or leave it out to fit the rounds to the budget."
)
SCALING_BAD_BUDGET = (
    "scaling: budget={value!r} is not usable; give seconds, more than 0 and at most {high}."
)
SCALING_BAD_SEED = "scaling: seed={value!r} is not an integer."
SCALING_NOT_CALLABLE = "scaling: the unit of work {value!r} is not callable; pass a function."
SCALING_COROUTINE_UNIT = (
    "scaling: {name} is a coroutine function; scaling measures plain functions: pass "
    "a function that runs it, such as lambda: asyncio.run({name}()) (threads mode only)."
)
SCALING_UNPICKLABLE_UNIT = (
    "scaling: {name} and its arguments cannot be sent to worker processes ({error}). "
    "In processes mode the unit of work is pickled: define the function at module level "
    "(not a lambda, a nested function or a local class) and pass picklable arguments, "
    "or measure threads only with modes=('threads',)."
)
SCALING_BUDGET_TOO_SMALL = (
    "scaling: one call of {name} takes {call:.2g} s, so {rounds} rounds over the worker counts "
    "{levels} need about {needed:.0f} s, far over budget={budget:g} s; pass a larger budget= "
    "(or fewer workers=, or rounds=3), or measure a smaller unit of work."
)

# -- scaling: measuring and gates (scaling/api.py) --------------------------------------------
SCALING_UNKNOWN_EXPECT = "scaling: expect={value!r} is not a verdict; use one of {choices}."
SCALING_BAD_MIN_EFFICIENCY = "scaling: min_efficiency={value!r} is not a number between 0 and 1."
SCALING_OVER_BUDGET = (
    "the measurement took {elapsed:.1f} s, over its budget of {budget:g} s: one call of the "
    "unit takes {call:.2g} s"
)
SCALING_EXPECT_FAILED = "scaling: expected {expected}, got {verdict}."
SCALING_EFFICIENCY_FAILED = (
    "scaling: efficiency {efficiency:.0%} with {workers} {mode} (interval {low:.0%} to "
    "{high:.0%}) is below min_efficiency={minimum:.0%}."
)
SCALING_NO_JUDGED_LEVEL = (
    "scaling: no efficiency at the usable cores to compare with min_efficiency."
)

# -- scaling: the report (scaling/report.py) --------------------------------------------------
SCALING_NOT_MEASURED = "scaling: no measurement with {workers} {mode}; measured: {levels}."

# -- scaling: running a round (scaling/measure.py) --------------------------------------------
SCALING_ROUND_TIMEOUT = (
    "scaling: a round with {workers} {mode} did not finish within {deadline:.1f} s; the unit of "
    "work may hang or wait for something that never comes. The measurement was stopped{extra}."
)
SCALING_ABANDONED_THREADS = " and {count} worker thread(s) were left running (daemon threads)"
SCALING_WORKER_DIED = (
    "scaling: worker process {index} died (exit code {code}) during the measurement."
)
SCALING_WORKER_RAISED = "scaling: the unit of work raised in a worker ({mode}):\n{detail}"
SCALING_CHILD_LOAD_FAILED = (
    "scaling: the worker processes could not load the unit of work:\n{detail}\n"
    "In processes mode the function and its arguments are pickled by reference: define the "
    "function at module level in an importable module, or pass modes=('threads',)."
)

# -- scaling: charts (scaling/plot.py) --------------------------------------------------------
SCALING_PLOT_EXTRA_MISSING = (
    "pytest-concurrency: --concurrency-plot needs matplotlib, which is not installed: "
    'pip install matplotlib, or from the project\'s source checkout pip install ".[plot]"'
)
