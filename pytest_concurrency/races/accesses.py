"""What a shared-state instruction of the user's code touches: the object and the name or key.

The perturbation stops a worker before each shared-state instruction of the code under test
(:mod:`pytest_concurrency.races.codefilter`); the data-race watch
(:mod:`pytest_concurrency.races.datarace`) asks here, at that point, which *location* the
instruction is about to read or write. The value stack cannot be read from Python, so each code
object is decoded once (cached) with a small symbolic stack: within a basic block, every slot
holds how its value was made (a local, a global, a constant, an attribute of another slot, a
dict view), and the operand of an instruction is evaluated from that recipe against the frame's
``f_locals``/``f_globals``. Anything the decoder does not model empties its stack, and so does
every jump target: an operand it cannot name is not recorded (a missed access, never a wrong
one).

Covered: ``obj.attr`` reads and writes where ``obj`` is a local, a global, a closure variable or
an attribute chain of one (``self.a``, ``cls._instance``, ``mod.value``); module globals;
``c[key]``, ``key in c`` and ``c[key] = v`` with such a ``c`` (a dict, list, set or deque) and a
key that is a local, constant or global of a builtin type (str, int, float, bytes, bool, None,
or a tuple of them: hashing any other key could run the user's code inside the tracer);
mutating method calls on such a container (``c.append(x)``, ``c.pop(k)``...), recorded as a
write of the whole container; iteration over such a container or its
``keys()``/``values()``/``items()``; ``len(c)``, a read of the whole container (the check of a
check-then-act on a buffer). An operand made by a call of the user's code that returns such an
operand directly (``def handlers(self): return self._handlers``, then
``self.handlers().values()``): the callee's load right before its ``return`` leaves the value
for the call's site (``("result", offset)``, evaluated against the worker's *results*, which the
call's own decision point clears first). A truth test of such a container loaded
as an attribute or a global (``if not self._items:``) is a read of the whole container. Not
covered: closure cells themselves (``nonlocal n; n += 1``), operands made by other calls,
iteration inside a generator expression or (before 3.12) a comprehension, attributes behind
properties or ``__getattr__``, truth tests of a local, and containers of other types.

Reads of functions, classes, modules and descriptors are immutable in practice and never
recorded. Pure module: no pytest import.
"""

from __future__ import annotations

import dis
import sys
from collections import deque
from types import BuiltinFunctionType, CodeType, FrameType, FunctionType, MethodType, ModuleType
from typing import Any, NamedTuple

READ = "read"
WRITE = "write"
ITERATE = "iterate"

CONTAINER_TYPES = (dict, list, set, deque)
MUTATING_METHODS: dict[type, frozenset[str]] = {
    list: frozenset({"append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse"}),
    dict: frozenset({"pop", "popitem", "clear", "update", "setdefault"}),
    set: frozenset(
        {
            "add",
            "discard",
            "remove",
            "pop",
            "clear",
            "update",
            "difference_update",
            "intersection_update",
            "symmetric_difference_update",
        }
    ),
    deque: frozenset(
        {
            "append",
            "appendleft",
            "pop",
            "popleft",
            "extend",
            "extendleft",
            "clear",
            "remove",
            "rotate",
            "insert",
        }
    ),
}
VIEW_METHODS = frozenset({"keys", "values", "items"})
IMMUTABLE_VALUES = (
    FunctionType,
    BuiltinFunctionType,
    MethodType,
    ModuleType,
    type,
    staticmethod,
    classmethod,
    property,
)
MAX_KEY_REPR = 40

MISSING: Any = object()

# -- the symbolic stack ----------------------------------------------------------------------
# A recipe is a tuple: ("local", name), ("global", name), ("const", value),
# ("attr", recipe, name), ("view", recipe) for c.keys()/values()/items(), ("iter", recipe),
# ("result", offset) for what the call at ``offset`` returned; None for a value the decoder
# cannot name.

Recipe = tuple[Any, ...] | None


class Operation(NamedTuple):
    """What the instruction at one offset does to shared state, as recipes to evaluate."""

    kind: str  # "attr", "global", "item", "contains", "method", "iterate", "whole", "call"
    op: str  # READ, WRITE or ITERATE
    target: Recipe  # the object (attr, method), the container (item, iterate)
    name: Any = None  # the attribute, global or method name; the key recipe; a call's end
    returned: bool = False  # a load the code returns at once: its value is the call's result
    truth: bool = False  # a load whose truth is tested at once (``if not self._items:``)


Results = dict[tuple[int, int], tuple[Any, str]]
"""What calls of the user's code returned, by (id of the calling frame, offset of the call):
the value and its label (one worker's, see :func:`evaluate`)."""


_PY311 = sys.version_info >= (3, 11)
_PY312 = sys.version_info >= (3, 12)
_NO_EFFECT = frozenset(
    {"NOP", "RESUME", "CACHE", "EXTENDED_ARG", "PRECALL", "KW_NAMES", "COPY_FREE_VARS"}
    | {"MAKE_CELL", "NOT_TAKEN", "SETUP_ANNOTATIONS"}
)
_POP_PUSH: dict[str, tuple[int, int]] = {
    # values popped, unknown values pushed
    **dict.fromkeys(("STORE_FAST", "STORE_NAME", "STORE_GLOBAL", "STORE_DEREF"), (1, 0)),
    **dict.fromkeys(("POP_TOP", "DELETE_ATTR"), (1, 0)),
    "STORE_ATTR": (2, 0),
    "STORE_SUBSCR": (3, 0),
    "DELETE_SUBSCR": (2, 0),
    **dict.fromkeys(("BINARY_OP", "COMPARE_OP", "IS_OP", "CONTAINS_OP"), (2, 1)),
    "BINARY_SUBSCR": (2, 1),
    **dict.fromkeys(
        ("UNARY_NEGATIVE", "UNARY_NOT", "UNARY_INVERT", "UNARY_POSITIVE", "TO_BOOL"), (1, 1)
    ),
    "FORMAT_SIMPLE": (1, 1),
    "FOR_ITER": (0, 1),
    "PUSH_NULL": (0, 1),
}
_LOAD_LOCAL = frozenset(
    {"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW", "LOAD_DEREF", "LOAD_CLASSDEREF"}
)  # LOAD_FAST_BORROW: 3.14's LOAD_FAST without a new reference


class _Stack:
    """The symbolic value stack of one basic block: bottomless, unknown below what it saw."""

    def __init__(self) -> None:
        self.items: list[Recipe] = []

    def pop(self, count: int = 1) -> list[Recipe]:
        """The top ``count`` recipes, deepest first (unknown ones as None)."""
        taken = self.items[-count:] if count <= len(self.items) else self.items[:]
        del self.items[len(self.items) - len(taken) :]
        return [None] * (count - len(taken)) + taken

    def peek(self, depth: int = 1) -> Recipe:
        return self.items[-depth] if depth <= len(self.items) else None

    def push(self, *recipes: Recipe) -> None:
        self.items.extend(recipes)

    def clear(self) -> None:
        self.items.clear()


def decode(code: CodeType) -> dict[int, Operation]:
    """The shared-state operations of ``code`` by offset (nested code objects apart)."""
    operations: dict[int, Operation] = {}
    stack = _Stack()
    previous = ""
    previous_offset = -1
    call: Operation | None = None  # the call just decoded: its end is the next offset
    for instruction in dis.get_instructions(code):
        if call is not None:
            operations[previous_offset] = call._replace(name=instruction.offset)
            call = None
        loop_head = instruction.opname == "FOR_ITER" and previous == "GET_ITER"
        if _is_jump_target(instruction) and not loop_head:
            stack.clear()  # a loop's head keeps its iterator: the loop jumps back to it
        if instruction.opname == "RETURN_VALUE" or _tests_truth(instruction.opname):
            loaded = operations.get(previous_offset)
            if loaded is not None and loaded.op == READ and loaded.kind in ("attr", "global"):
                operations[previous_offset] = (
                    loaded._replace(returned=True)
                    if instruction.opname == "RETURN_VALUE"
                    else loaded._replace(truth=True)
                )
        previous = instruction.opname
        if previous not in _NO_EFFECT:
            previous_offset = instruction.offset
        operation = _operation(instruction, stack)
        if operation is not None:
            operations[instruction.offset] = operation
            call = operation if operation.kind == "call" else None
        if not _apply(instruction, stack):
            stack.clear()
    return operations


def _tests_truth(opname: str) -> bool:
    """``TO_BOOL``, ``UNARY_NOT`` and the jumps on a value's truth (not on ``is None``)."""
    if opname in ("TO_BOOL", "UNARY_NOT"):
        return True
    return "JUMP" in opname and opname.endswith(("_IF_FALSE", "_IF_TRUE", "_OR_POP"))


def _is_jump_target(instruction: dis.Instruction) -> bool:
    target = getattr(instruction, "is_jump_target", None)
    if target is None:
        return getattr(instruction, "label", None) is not None
    return bool(target)


def _method_form(instruction: dis.Instruction) -> bool:
    """``LOAD_ATTR`` that loads a method for a call (3.12+: the low bit of its argument)."""
    return _PY312 and instruction.opname == "LOAD_ATTR" and bool((instruction.arg or 0) & 1)


def _operation(instruction: dis.Instruction, stack: _Stack) -> Operation | None:
    """What ``instruction`` touches, before it runs (its operands are on ``stack``)."""
    name = instruction.opname
    if name == "LOAD_METHOD" or _method_form(instruction):
        return Operation("method", READ, stack.peek(), instruction.argval)
    if name == "LOAD_ATTR":
        return Operation("attr", READ, stack.peek(), instruction.argval)
    if name in ("STORE_ATTR", "DELETE_ATTR"):
        return Operation("attr", WRITE, stack.peek(), instruction.argval)
    if name == "LOAD_GLOBAL":
        return Operation("global", READ, None, instruction.argval)
    if name in ("STORE_GLOBAL", "DELETE_GLOBAL"):
        return Operation("global", WRITE, None, instruction.argval)
    if name == "BINARY_SUBSCR":
        return Operation("item", READ, stack.peek(2), stack.peek(1))
    if name == "STORE_SUBSCR":
        return Operation("item", WRITE, stack.peek(2), stack.peek(1))
    if name == "DELETE_SUBSCR":
        return Operation("item", WRITE, stack.peek(2), stack.peek(1))
    if name == "CONTAINS_OP":
        return Operation("contains", READ, stack.peek(1), stack.peek(2))
    if name == "FOR_ITER":
        iterator = stack.peek()
        if iterator is not None and iterator[0] == "iter":
            return Operation("iterate", ITERATE, iterator[1])
    if name in ("CALL", "CALL_FUNCTION") and instruction.arg == 1 and _calls_len(stack):
        return Operation("whole", READ, stack.peek(1))  # len(c): a check of the whole container
    if name in _RESULT_CALLS:  # clears its earlier result; ``name``: where it ends
        return Operation("call", READ, None, instruction.offset + 2)
    return None


_RESULT_CALLS = frozenset({"CALL", "CALL_METHOD", "CALL_FUNCTION"})


def _calls_len(stack: _Stack) -> bool:
    """Is the callee below the one argument on the stack the builtin ``len``? (It sits just
    below the argument, or one slot lower under a NULL or self, as the version pushes them.)"""
    return any(stack.peek(depth) == ("global", "len") for depth in (2, 3))


def _apply(instruction: dis.Instruction, stack: _Stack) -> bool:
    """Run ``instruction`` on the symbolic stack; False if it is not modelled (or ends the
    block: return, raise, jump), which empties the stack."""
    name = instruction.opname
    if name in _NO_EFFECT:
        return True
    counts = _POP_PUSH.get(name)
    if counts is None and not _PY311 and name.startswith(("BINARY_", "INPLACE_")):
        counts = (2, 1)  # 3.10: one opcode per operator
    if counts is None and name.startswith("POP_JUMP"):
        counts = (1, 0)
    if counts is not None:
        stack.pop(counts[0])
        stack.push(*[None] * counts[1])
        return True
    return _apply_load(instruction, stack) or _apply_call(instruction, stack)


def _apply_load(instruction: dis.Instruction, stack: _Stack) -> bool:
    """Loads, whose recipes the operations evaluate, and the stack's own shuffles."""
    name = instruction.opname
    arg = instruction.arg or 0
    if name in _LOAD_LOCAL:
        stack.push(("local", instruction.argval))
    elif name in ("LOAD_FAST_LOAD_FAST", "LOAD_FAST_BORROW_LOAD_FAST_BORROW"):
        first, second = instruction.argval
        stack.push(("local", first), ("local", second))
    elif name in ("LOAD_CONST", "LOAD_SMALL_INT"):  # LOAD_SMALL_INT: 3.14's small ints
        stack.push(("const", instruction.argval))
    elif name in ("LOAD_GLOBAL", "LOAD_NAME"):
        if _PY311 and name == "LOAD_GLOBAL" and arg & 1:
            stack.push(None)  # the NULL before a called global
        stack.push(("global", instruction.argval))
    elif name == "LOAD_METHOD" or _method_form(instruction):
        (owner,) = stack.pop()
        stack.push(("method", owner, instruction.argval), owner)
    elif name == "LOAD_ATTR":
        (owner,) = stack.pop()
        stack.push(("attr", owner, instruction.argval))
    elif name == "GET_ITER":
        (iterable,) = stack.pop()
        stack.push(("iter", iterable))
    elif name in ("COPY", "DUP_TOP"):
        stack.push(stack.peek(arg or 1))
    elif name in ("SWAP", "ROT_TWO"):
        _swap(stack, arg or 2)
    else:
        return False
    return True


def _apply_call(instruction: dis.Instruction, stack: _Stack) -> bool:
    name = instruction.opname
    arg = instruction.arg or 0
    if name in ("CALL", "CALL_METHOD"):
        _call(stack, arg, arg + 2, instruction.offset)
    elif name == "CALL_FUNCTION":
        _call(stack, arg, arg + 1, instruction.offset)
    elif name in ("CALL_KW", "CALL_FUNCTION_KW"):
        stack.pop(arg + (3 if name == "CALL_KW" else 2))
        stack.push(None)
    else:
        return False
    return True


def _call(stack: _Stack, arguments: int, popped: int, offset: int) -> None:
    """A call: ``c.keys()``/``values()``/``items()`` of a known container is a view of it;
    any other call's value is its result, known if the callee returned a load of the user's."""
    taken = stack.pop(popped)
    callee = taken[0]
    if (
        arguments == 0
        and callee is not None
        and callee[0] == "method"
        and callee[2] in VIEW_METHODS
    ):
        stack.push(("view", callee[1]))
    else:
        stack.push(("result", offset))


def _swap(stack: _Stack, depth: int) -> None:
    items = stack.items
    if depth <= len(items):
        items[-1], items[-depth] = items[-depth], items[-1]
    else:
        stack.clear()


# -- evaluating a recipe against the running frame ------------------------------------------


def evaluate(recipe: Recipe, frame: FrameType, results: Results | None = None) -> Any:
    """The value ``recipe`` names in ``frame``, read without running any of the user's code
    (no property, no ``__getattr__``); :data:`MISSING` when it cannot be known."""
    if recipe is None:
        return MISSING
    what = recipe[0]
    if what == "result":
        found = results.get((id(frame), recipe[1])) if results else None
        return MISSING if found is None else found[0]
    if what == "local":
        return frame.f_locals.get(recipe[1], MISSING)
    if what == "global":
        return frame.f_globals.get(recipe[1], MISSING)
    if what == "const":
        return recipe[1]
    if what == "attr":
        owner = evaluate(recipe[1], frame, results)
        return MISSING if owner is MISSING else static_attribute(owner, recipe[2])
    if what in ("view", "iter"):
        return evaluate(recipe[1], frame, results)
    return MISSING


def static_attribute(owner: Any, name: str) -> Any:
    """``owner.name`` from the instance's (or class's) own dict, then its class's dicts in
    MRO order; :data:`MISSING` for a descriptor that would run code, or no such attribute."""
    own = own_dict(owner)
    if own is not None and name in own:
        return own[name]
    for klass in type(owner).__mro__ if not isinstance(owner, type) else owner.__mro__:
        found = vars(klass).get(name, MISSING)
        if found is not MISSING:
            return MISSING if hasattr(type(found), "__get__") else found
    return MISSING


def own_dict(owner: Any) -> Any:
    try:
        return object.__getattribute__(owner, "__dict__")
    except Exception:  # no __dict__ (slots, builtins): nothing of its own to read
        return None


def recipe_label(recipe: Recipe, frame: FrameType, results: Results | None = None) -> str:
    """How the user would name what ``recipe`` names: ``Inventory.stock``, ``_cache``."""
    if recipe is None:
        return "?"
    what = recipe[0]
    if what in ("local", "global"):
        return str(recipe[1])
    if what == "attr":
        owner = evaluate(recipe[1], frame, results)
        return attribute_label(owner, recipe[2]) if owner is not MISSING else recipe[2]
    if what in ("view", "iter"):
        return recipe_label(recipe[1], frame, results)
    if what == "result":
        found = results.get((id(frame), recipe[1])) if results else None
        return "?" if found is None else found[1]
    return "?"


def attribute_label(owner: Any, name: str) -> str:
    if isinstance(owner, ModuleType):
        return f"{owner.__name__.rpartition('.')[2]}.{name}"
    if isinstance(owner, type):
        return f"{owner.__qualname__}.{name}"
    return f"{type(owner).__qualname__}.{name}"


def key_text(key: Any) -> str:
    try:
        text = repr(key)
    except Exception:  # an unprintable key still names a location
        text = f"<{type(key).__name__}>"
    return text if len(text) <= MAX_KEY_REPR else text[: MAX_KEY_REPR - 3] + "..."


def is_immutable_value(value: Any) -> bool:
    """Code, classes and modules: read by every call, written by none (in practice)."""
    return isinstance(value, IMMUTABLE_VALUES)


def mutating_method(container: Any, name: str) -> bool:
    for kind, names in MUTATING_METHODS.items():
        if isinstance(container, kind):
            return name in names
    return False
