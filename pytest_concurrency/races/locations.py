"""Which locations an operation of the user's code touches, as the data-race watch keys them.

:mod:`~pytest_concurrency.races.accesses` says what an instruction does, as recipes;
:func:`locate` evaluates them against the running frame into locations: an attribute of an
object (``(id(owner), name)``), a module global, an item of a container (``(id(c), key)``)
or a container as a whole (``(id(c), WHOLE)``), each with the object to keep alive for the
run and a label in the user's terms. Only keys whose hash and equality are the builtins' own
are used (hashing another could run the user's code inside the tracer); ``self.x`` stored in
``__init__`` is not shared yet. Pure module: no pytest import.
"""

from __future__ import annotations

import sys
from types import CodeType, FrameType
from typing import Any

from pytest_concurrency.races.accesses import (
    CONTAINER_TYPES,
    ITERATE,
    MISSING,
    READ,
    WRITE,
    Operation,
    Results,
    attribute_label,
    evaluate,
    is_immutable_value,
    key_text,
    mutating_method,
    recipe_label,
    static_attribute,
)

WHOLE = "<whole>"
Located = list[tuple[tuple[Any, ...], object, Any, str]]


def locate(operation: Operation, frame: FrameType, results: Results) -> Located | None:
    """The locations ``operation`` touches in ``frame``: (key, object kept, label, op);
    ``results``: what the worker's calls of the user's code returned."""
    kind = operation.kind
    if kind == "attr":
        return _attribute(operation, frame, results)
    if kind == "global":
        return _global(operation, frame)
    container = evaluate(operation.target, frame, results)
    if not isinstance(container, CONTAINER_TYPES):
        return None
    whole = (
        (id(container), WHOLE),
        container,
        lambda: recipe_label(operation.target, frame, results),
    )
    if kind == "method":
        if not mutating_method(container, operation.name):
            return None
        return [(*whole, WRITE)]
    if kind == "iterate":
        return [(*whole, ITERATE)]
    if kind == "whole":
        return [(*whole, READ)]
    if kind == "contains" and not isinstance(container, (dict, set)):
        return [(*whole, READ)]  # a scan of a list or deque
    key = evaluate(operation.name, frame, results)
    if key is MISSING:
        return None
    if not _plain_key(key):
        return None  # hashing or comparing it could run the user's code inside the tracer

    def label() -> str:
        return f"{recipe_label(operation.target, frame, results)}[{key_text(key)}]"

    item = ((id(container), key), container, label)
    if operation.op == WRITE:
        return [(*item, WRITE), (*whole, WRITE)]
    return [(*item, READ)]


PLAIN_KEY_TYPES = frozenset({str, int, float, bytes, bool, type(None)})


def _plain_key(key: Any) -> bool:
    """A key whose hash and equality are the builtins' own (a tuple of such keys too)."""
    if type(key) is tuple:
        return all(_plain_key(part) for part in key)
    return type(key) in PLAIN_KEY_TYPES


def _attribute(operation: Operation, frame: FrameType, results: Results) -> Located | None:
    if _initializing(operation, frame.f_code):
        return None
    owner = evaluate(operation.target, frame, results)
    if owner is MISSING:
        return None
    name = operation.name

    def label() -> str:
        return attribute_label(owner, name)

    located: Located = [((id(owner), name), owner, label, operation.op)]
    if operation.op == READ:
        value = static_attribute(owner, name)
        if value is MISSING or is_immutable_value(value):
            return None
        if operation.truth and isinstance(value, CONTAINER_TYPES):  # if not self._items:
            located.append(((id(value), WHOLE), value, label, READ))
    return located


def _initializing(operation: Operation, code: CodeType) -> bool:
    """``self.x`` in ``__init__``: the object is being made by this worker and is not shared
    yet (its maker publishes it afterwards, through a container or an attribute)."""
    return (
        code.co_name == "__init__"
        and code.co_argcount > 0
        and operation.target == ("local", code.co_varnames[0])
    )


def _global(operation: Operation, frame: FrameType) -> Located | None:
    namespace = frame.f_globals
    name = operation.name
    if operation.op == READ:
        value = namespace.get(name, MISSING)
        if value is MISSING or is_immutable_value(value):
            return None  # a builtin, a function, a class, a module
    module = sys.modules.get(str(namespace.get("__name__")))
    owner: object = module if module is not None and vars(module) is namespace else namespace

    def label() -> str:
        return str(name) if owner is namespace else attribute_label(owner, name)

    located: Located = [((id(owner), name), owner, label, operation.op)]
    if operation.op == READ and operation.truth and isinstance(value, CONTAINER_TYPES):
        located.append(((id(value), WHOLE), value, label, READ))  # if not _cache:
    return located
