"""The pytest side of scaling: the ``scaling`` fixture's value and the ``scaling`` marker's call.

The session wires :func:`scaling_fixture_value` into the ``scaling`` fixture and calls
:func:`run_scaling_marker` from its call hook for tests marked ``@pytest.mark.scaling``.
Both measure with :func:`pytest_concurrency.scaling.api.measure_scaling` and record the report's
JSON on the item with :func:`pytest_concurrency.plugin.entries.record_entry`, for the terminal
summary, the JSON report and the charts.

Timings are unreliable under pytest-xdist (other workers compete for the cores) and under a
tracer (coverage, a debugger, a profiler: every line is slowed and threads serialize on the
tracer), so there a measurement is skipped with the reason, unless ``force=True`` asks for it
anyway; the report then carries a warning.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest

from pytest_concurrency.errors import ScalingMeasurementError, ScalingUsageError
from pytest_concurrency.plugin.entries import record_entry
from pytest_concurrency.scaling import messages as scaling_messages
from pytest_concurrency.scaling.api import (
    check_expectation,
    measure_scaling,
    validate_expectation,
)
from pytest_concurrency.scaling.plan import marker_options
from pytest_concurrency.scaling.report import ScalingReport
from pytest_concurrency.scaling.verdict import MODES

SESSION_PLUGIN_NAME = "concurrency-session"
OWN_MONITORING_TOOL = "pytest-concurrency"
"""Our own ``sys.monitoring`` tool (schedule perturbation) is not a tracer to skip for."""
MONITORING_TOOL_IDS = range(6)


# --------------------------------------------------------------------------- reliability


def _trace_function_owner(trace: object) -> str:
    module = str(getattr(trace, "__module__", None) or getattr(type(trace), "__module__", ""))
    if module.startswith("coverage"):
        return "coverage"
    return f"sys.settrace ({module or type(trace).__name__})"


def active_tracer() -> str | None:
    """The name of a tracer or profiler-like tool active in this process, or None."""
    trace = sys.gettrace()
    if trace is not None:
        return _trace_function_owner(trace)
    coverage = sys.modules.get("coverage")
    current = getattr(getattr(coverage, "Coverage", None), "current", None)
    if callable(current) and current() is not None:
        return "coverage"
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is not None:
        for tool_id in MONITORING_TOOL_IDS:
            name = monitoring.get_tool(tool_id)
            if name and name != OWN_MONITORING_TOOL:
                return f"sys.monitoring tool {name!r}"
    return None


def reliability_problems(config: pytest.Config) -> list[tuple[str, str]]:
    """(skip reason, forced warning) for each reason the timings cannot be trusted here."""
    problems = []
    if hasattr(config, "workerinput"):
        problems.append(
            (scaling_messages.SCALING_SKIP_XDIST, scaling_messages.SCALING_FORCED_XDIST)
        )
    tracer = active_tracer()
    if tracer is not None:
        problems.append(
            (
                scaling_messages.SCALING_SKIP_TRACER.format(tracer=tracer),
                scaling_messages.SCALING_FORCED_TRACER.format(tracer=tracer),
            )
        )
    return problems


def _skip_or_warnings(config: pytest.Config, force: bool) -> list[str]:
    """Skip the test when the timings cannot be trusted and not forced; else the warnings."""
    problems = reliability_problems(config)
    if problems and not force:
        pytest.skip(problems[0][0])
    return [warning for _, warning in problems]


def _session_seed(config: pytest.Config) -> int:
    session = config.pluginmanager.get_plugin(SESSION_PLUGIN_NAME)
    seed = getattr(session, "session_seed", 0)
    return seed if isinstance(seed, int) else 0


def _record(item: pytest.Item, report: ScalingReport, warnings: Iterable[str]) -> None:
    for warning in warnings:
        report.add_warning(warning)
    record_entry(item, {"kind": "scaling", "nodeid": item.nodeid, **report.to_json()})


# --------------------------------------------------------------------------- the fixture


def scaling_fixture_value(request: pytest.FixtureRequest) -> Callable[..., ScalingReport]:
    """The ``scaling`` fixture: ``scaling(fn, *args, **kwargs)`` measures ``fn`` and returns
    a :class:`~pytest_concurrency.scaling.report.ScalingReport`.

    The keywords ``workers``, ``modes``, ``rounds``, ``budget``, ``seed`` and ``force`` configure
    the measurement; every other keyword goes to ``fn`` (use :func:`functools.partial` to pass
    one of those names to ``fn``).
    """
    item = request.node
    config = request.config

    def scaling(
        fn: Callable[..., Any],
        /,
        *args: Any,
        workers: int | Sequence[int] | None = None,
        modes: str | Sequence[str] = MODES,
        rounds: int | None = None,
        budget: float | None = None,
        seed: int | None = None,
        force: bool = False,
        **kwargs: Any,
    ) -> ScalingReport:
        __tracebackhide__ = True
        warnings = _skip_or_warnings(config, force)
        report = measure_scaling(
            fn,
            args,
            kwargs,
            workers=workers,
            modes=modes,
            rounds=rounds,
            budget=budget,
            seed=_session_seed(config) if seed is None else seed,
        )
        _record(item, report, warnings)
        return report

    return scaling


# --------------------------------------------------------------------------- the marker


def _marker_kwargs(item: pytest.Function) -> dict[str, Any]:
    marker = item.get_closest_marker("scaling")
    if marker is None:
        return {}
    try:
        return marker_options(marker.args, marker.kwargs)
    except ScalingUsageError as error:
        pytest.fail(
            scaling_messages.SCALING_MARKER_USAGE.format(nodeid=item.nodeid, error=error),
            pytrace=False,
        )


def _test_body(item: pytest.Function) -> Callable[..., Any]:
    """The test function with its fixture values bound: the unit of work."""
    if inspect.iscoroutinefunction(item.obj):
        pytest.fail(
            scaling_messages.SCALING_MARKER_COROUTINE.format(nodeid=item.nodeid), pytrace=False
        )
    argnames = item._fixtureinfo.argnames
    return functools.partial(item.obj, **{name: item.funcargs[name] for name in argnames})


def run_scaling_marker(item: pytest.Function) -> None:
    """Measure the body of a test marked ``@pytest.mark.scaling``; fail it on a missed gate.

    Marker keywords: ``workers``, ``modes``, ``expect``, ``min_efficiency``, ``rounds``,
    ``budget``, ``seed``, ``force``. A usage error fails the test with the message and no
    traceback; an exception from the body propagates as the test's own failure.
    """
    __tracebackhide__ = True
    if not isinstance(item, pytest.Function):
        pytest.fail(
            scaling_messages.SCALING_MARKER_NOT_FUNCTION.format(nodeid=item.nodeid), pytrace=False
        )
    options = _marker_kwargs(item)
    expect = options.pop("expect", None)
    min_efficiency = options.pop("min_efficiency", None)
    force = bool(options.pop("force", False))
    seed = options.pop("seed", None)
    try:
        validate_expectation(expect, min_efficiency)
    except ScalingUsageError as error:
        pytest.fail(
            scaling_messages.SCALING_MARKER_USAGE.format(nodeid=item.nodeid, error=error),
            pytrace=False,
        )
    warnings = _skip_or_warnings(item.config, force)
    body = _test_body(item)
    try:
        report = measure_scaling(
            body, seed=_session_seed(item.config) if seed is None else seed, **options
        )
    except ScalingUsageError as error:
        text = str(error) + (
            scaling_messages.SCALING_FIXTURE_ARGUMENTS_HINT if "pickled" in str(error) else ""
        )
        pytest.fail(
            scaling_messages.SCALING_MARKER_USAGE.format(nodeid=item.nodeid, error=text),
            pytrace=False,
        )
    except ScalingMeasurementError as error:
        pytest.fail(str(error), pytrace=False)
    _record(item, report, warnings)
    failure = check_expectation(report, expect, min_efficiency)
    if failure is not None:
        pytest.fail(failure, pytrace=False)
