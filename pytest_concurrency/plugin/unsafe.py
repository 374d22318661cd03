"""Which code of a collected test to read for thread-unsafe uses
(:mod:`pytest_concurrency.engine.unsafe_code` reads it).

Read for every pattern: the code every worker runs, that is the test function, and for a
``unittest.TestCase`` method also its class's setUp and tearDown. The fixtures the test
requests run once, before the workers start, so a process-wide change they make is one
change that every worker sees, not a collision: they are read only for the names the ini
file lists (``concurrency_unsafe_names``). Only the user's code is read (never pytest's or
the plugin's); a source that cannot be read or parsed gives no reason. Answers are cached
per code object.
"""

from __future__ import annotations

import functools
import inspect
import textwrap
from collections.abc import Callable, Iterator, Sequence
from types import CodeType
from typing import Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.owncode import is_user_file
from pytest_concurrency.plugin.items import is_unittest_method, test_function


def unsafe_reasons(item: pytest.Function, extra_names: Sequence[str]) -> list[str]:
    """Why the test is thread-unsafe to run concurrently, from its code; empty if nothing."""
    found: dict[str, None] = {}
    function = test_function(item)
    for reason in attribute_reasons(function):
        found.setdefault(reason, None)
    writes = bool({"tmp_path", "tmpdir"} & set(item.fixturenames))
    names = tuple(extra_names)
    for code in body_codes(item, function):
        for reason in code_reasons(code, names, writes):
            found.setdefault(reason, None)
    if names:
        for code in fixture_codes(item):
            for reason in code_reasons(code, names, False, builtin=False):
                found.setdefault(reason, None)
    return list(found)


def attribute_reasons(function: Any) -> Iterator[str]:
    """What decorators leave on the function: Hypothesis' marker, mock.patch's patchings."""
    if getattr(function, "is_hypothesis_test", False):
        yield messages.UNSAFE_HYPOTHESIS
    if getattr(function, "patchings", None):
        yield messages.UNSAFE_MOCK_PATCH


def body_codes(item: pytest.Function, function: Any) -> Iterator[CodeType]:
    yield from user_code(inspect.unwrap(function))
    if is_unittest_method(item):
        for name in ("setUp", "tearDown"):
            yield from user_code(getattr(item.cls, name, None))


def fixture_codes(item: pytest.Function) -> Iterator[CodeType]:
    for definitions in item._fixtureinfo.name2fixturedefs.values():
        for definition in definitions:
            yield from user_code(getattr(definition, "func", None))


def user_code(function: Callable[..., Any] | None) -> Iterator[CodeType]:
    code = getattr(inspect.unwrap(function), "__code__", None) if function else None
    if isinstance(code, CodeType) and is_user_file(code.co_filename):
        yield code


@functools.lru_cache(maxsize=4096)
def code_reasons(
    code: CodeType, extra_names: tuple[str, ...], writes_tmp_path: bool, builtin: bool = True
) -> tuple[str, ...]:
    from pytest_concurrency.engine.unsafe_code import parse
    from pytest_concurrency.engine.unsafe_code import unsafe_reasons as read_reasons

    tree = parse_code(code, parse)
    if tree is None:
        return ()
    reasons = read_reasons(tree, extra_names=extra_names, writes_tmp_path=writes_tmp_path)
    if not builtin:
        configured = {messages.UNSAFE_CONFIGURED.format(name=name) for name in extra_names}
        reasons = [reason for reason in reasons if reason in configured]
    return tuple(reasons)


def parse_code(code: CodeType, parse: Callable[[str], Any]) -> Any:
    try:
        lines, _ = inspect.findsource(code)
        source = inspect.getblock(lines[code.co_firstlineno - 1 :])
    except (OSError, TypeError, IndexError):
        return None
    return parse(textwrap.dedent("".join(source)))
