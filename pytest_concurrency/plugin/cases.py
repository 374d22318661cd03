"""``unittest.TestCase`` methods under ``--concurrency-all``: run concurrently, one instance
per worker call.

unittest runs a method as setUp, the method, tearDown, then the cleanups, on an instance made
for that one method. A concurrent run does the same in each worker: every worker call makes
its own instance (``cls(method_name)``), so that ``self`` is never shared between workers
(a shared instance would let one worker's setUp reset the state another is testing: a false
alarm); what the workers share is what the methods share in the code under test, class
attributes and ``setUpClass`` included (pytest runs ``setUpClass`` and ``tearDownClass``
once, around the class, as it always does). ``self.skipTest()`` is a pytest skip;
``subTest`` runs its blocks inline (the first failing one fails the call).

A method or class that unittest skips, or that expects failure (``@expectedFailure``), and a
coroutine method (``IsolatedAsyncioTestCase``) run once, by unittest, with their reason.
"""

from __future__ import annotations

import functools
import inspect
import unittest
from collections.abc import Callable

import pytest

from pytest_concurrency import messages


def case_call(item: pytest.Function) -> Callable[[], None]:
    """One worker call of the method: a fresh instance, setUp, the method, tearDown (a
    partial of module-level names, so that process mode can pickle it)."""
    assert item.cls is not None
    return functools.partial(run_fresh_case, item.cls, item.name)


def run_fresh_case(cls: type[unittest.TestCase], name: str) -> None:
    __tracebackhide__ = True
    run_case(cls(name), name)


def run_case(case: unittest.TestCase, name: str) -> None:
    """unittest's order: setUp; the method; tearDown if setUp passed; cleanups always. The
    first failure is raised (the method's before tearDown's before a cleanup's)."""
    __tracebackhide__ = True
    first: BaseException | None = None
    try:
        try:
            case.setUp()
        except unittest.SkipTest as skip:
            raise pytest.skip.Exception(str(skip)) from None
        try:
            getattr(case, name)()
        except unittest.SkipTest as skip:
            first = pytest.skip.Exception(str(skip))
        except BaseException as exc:
            first = exc
        try:
            case.tearDown()
        except BaseException as exc:
            first = first or exc
    finally:
        first = run_cleanups(case, first)
    if first is not None:
        raise first


def run_cleanups(case: unittest.TestCase, first: BaseException | None) -> BaseException | None:
    """``addCleanup`` callbacks, last added first; the first failure is kept."""
    __tracebackhide__ = True
    cleanups = getattr(case, "_cleanups", [])
    while cleanups:
        function, args, kwargs = cleanups.pop()
        try:
            function(*args, **kwargs)
        except BaseException as exc:
            first = first or exc
    return first


def serial_reason(item: pytest.Function) -> str | None:
    """Why a TestCase method runs once, by unittest; None to run it concurrently."""
    method = getattr(item.cls, item.name, None)
    if getattr(item.cls, "__unittest_skip__", False) or getattr(method, "__unittest_skip__", 0):
        return messages.SERIAL_UNITTEST_SKIPPED
    if getattr(method, "__unittest_expecting_failure__", False) or getattr(
        item.cls, "__unittest_expecting_failure__", False
    ):
        return messages.SERIAL_UNITTEST_EXPECTED_FAILURE
    if inspect.iscoroutinefunction(method):
        return messages.SERIAL_UNITTEST_ASYNC
    return None
