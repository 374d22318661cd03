"""Where in the code under test shared state is touched.

The perturbation engine only makes a worker give way inside the code under test, as
:class:`pytest_concurrency.engine.owncode.CodeFilter` judges it (the one answer every part of
the plugin uses), and inside that code only at *shared-state operations*: attribute, global,
closure and subscript loads and stores, method loads, calls, membership tests and iteration
steps. The offsets are found once per code object and session. Pure module: no pytest
import.
"""

from __future__ import annotations

import dis
from types import CodeType

ATTRIBUTE_OPS = ("LOAD_ATTR", "STORE_ATTR", "DELETE_ATTR", "LOAD_METHOD", "LOAD_SUPER_ATTR")
GLOBAL_OPS = ("LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_FROM_DICT_OR_GLOBALS")
NAME_OPS = ("LOAD_NAME", "STORE_NAME", "DELETE_NAME")
CELL_OPS = ("LOAD_DEREF", "STORE_DEREF", "LOAD_CLASSDEREF", "LOAD_FROM_DICT_OR_DEREF")
SUBSCRIPT_OPS = ("BINARY_SUBSCR", "STORE_SUBSCR", "DELETE_SUBSCR", "BINARY_SLICE", "STORE_SLICE")
CALL_OPS = (
    "CALL_FUNCTION",
    "CALL_FUNCTION_KW",
    "CALL_METHOD",
    "CALL_FUNCTION_EX",
    "CALL",
    "CALL_KW",
)
CONTAINER_OPS = ("CONTAINS_OP", "FOR_ITER")
SHARED_STATE_OPNAMES = frozenset(
    ATTRIBUTE_OPS + GLOBAL_OPS + NAME_OPS + CELL_OPS + SUBSCRIPT_OPS + CALL_OPS + CONTAINER_OPS
)
"""Instructions before which a worker may be made to give way."""


_OFFSETS: dict[int, tuple[CodeType, frozenset[int]]] = {}
"""Each code object's offsets, found once per session (a library's code is met by test after
test, each with its own perturbation); the entry keeps the code alive, so its id stays its."""


def shared_state_offsets(code: CodeType) -> frozenset[int]:
    """Byte offsets of the shared-state instructions of ``code`` (not of nested code)."""
    entry = _OFFSETS.get(id(code))
    if entry is None or entry[0] is not code:
        offsets = frozenset(
            instruction.offset
            for instruction in dis.get_instructions(code)
            if instruction.opname in SHARED_STATE_OPNAMES
        )
        entry = _OFFSETS[id(code)] = (code, offsets)
    return entry[1]
