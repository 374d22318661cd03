"""What crosses between process mode's parent and its children, as the parent sees it.

Going out: the calls, pickled, or the exact piece that will not pickle and how to fix it, and
the modules a child imports before it unpickles them. Coming back: a child's failure rebuilt
as an exception that reads like the user's (the original when it unpickles, else pytest's own
skip or xfail through :class:`~.framework.FrameworkHooks`, else a stand-in of the same name),
and a crashed child's exit status and faulthandler stack, placed in the user's code.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import signal
import sys
from collections.abc import Iterator, Sequence

from pytest_concurrency import messages
from pytest_concurrency.engine import owncode
from pytest_concurrency.engine.outcomes import CallFailure, CallKind, FailureOrigin
from pytest_concurrency.runners import process_child as child
from pytest_concurrency.runners.base import WorkerCall
from pytest_concurrency.runners.framework import SignalFactory

__tracebackhide__ = True  # every frame here is the plugin's: pytest leaves them out

OWN_FRAME_MARKERS = (
    os.sep + "multiprocessing" + os.sep,
    "process_child.py",
    'File "<string>", line 1 in <module>',  # the fork server's or spawn's -c entry
)


# -- what to send: pickle the calls, or say exactly what will not pickle -------------------


def call_parts(call: object) -> Iterator[tuple[str, object]]:
    """The named pieces of a call that a child needs: function, arguments, bound object."""
    if isinstance(call, functools.partial):
        yield from call_parts(call.func)
        for position, value in enumerate(call.args):
            yield f"positional argument {position}", value
        for name, value in call.keywords.items():
            yield f"the fixture or argument {name!r}", value
        return
    bound_to = getattr(call, "__self__", None)
    function = getattr(call, "__func__", None)
    if bound_to is not None and function is not None and not isinstance(bound_to, type):
        yield (
            f"the object {type(bound_to).__qualname__} that {function.__qualname__} is bound to",
            bound_to,
        )
        yield f"the function {function.__qualname__}", function
        return
    yield f"the function {getattr(call, '__qualname__', repr(call))}", call


def unpicklable_part(calls: Sequence[object]) -> tuple[str, object, Exception] | None:
    """The first piece of ``calls`` that does not pickle, with the error pickling raised."""
    for call in calls:
        for what, value in call_parts(call):
            try:
                pickle.dumps(value)
            except Exception as error:
                return what, value, error
    return None


def unpicklable_message(calls: Sequence[object], error: Exception, start_method: str) -> str:
    part = unpicklable_part(calls)
    what, value = ("the test body", calls[0]) if part is None else part[:2]
    reason = error if part is None else part[2]
    local = what.startswith("the function") and ("<locals>" in what or "<lambda>" in what)
    hint = messages.UNPICKLABLE_FUNCTION_FIX if local else messages.UNPICKLABLE_VALUE_FIX
    return messages.UNPICKLABLE.format(
        what=what, type=type(value).__qualname__, error=reason, method=start_method, fix=hint
    )


def user_modules(calls: Sequence[object]) -> list[tuple[str, str | None]]:
    """Modules the children import before unpickling: where the functions and classes live."""
    names: dict[str, str | None] = {}
    for call in calls:
        for _, value in call_parts(call):
            module_name = getattr(value, "__module__", None) or type(value).__module__
            module = sys.modules.get(module_name)
            filename = getattr(module, "__file__", None)
            if module_name in ("__main__", "builtins") or module is None or not filename:
                continue
            names.setdefault(module_name, filename)
    return list(names.items())


def rewrites_asserts(modules: Sequence[tuple[str, str | None]]) -> bool:
    """Whether pytest rewrote the asserts of these modules in the parent."""
    for name, _ in modules:
        loader = getattr(sys.modules.get(name), "__loader__", None)
        if type(loader).__name__ == "AssertionRewritingHook":
            return True
    return False


def same_calls(held: Sequence[WorkerCall] | None, wanted: Sequence[WorkerCall]) -> bool:
    """Whether a forked pool already holds these very calls (then it need not fork again)."""
    return (
        held is not None
        and len(held) == len(wanted)
        and all(a is b for a, b in zip(held, wanted, strict=True))
    )


def call_location(call: object) -> tuple[str, int]:
    """The file and first line of the function a call runs (for crashes without a stack)."""
    while isinstance(call, functools.partial):
        call = call.func
    code = getattr(getattr(call, "__func__", call), "__code__", None)
    if code is None:
        return "<worker process>", 0
    return code.co_filename, code.co_firstlineno


# -- what comes back: rebuild an exception that reads like the user's ---------------------


def rebuild_exception(
    data: child.FailureData, worker: int, signal: SignalFactory | None = None
) -> BaseException:
    """The child's exception: the original if it unpickles, else the framework's own skip or
    xfail (``signal``, see :class:`~.framework.FrameworkHooks`) or a stand-in of the same name.

    Either way it carries the child's traceback text as a note, so the report shows the lines
    of the user's code that ran in the worker process.
    """
    exc: BaseException | None = None
    if data["pickled"] is not None:
        with contextlib.suppress(Exception):
            loaded = pickle.loads(data["pickled"])
            exc = loaded if isinstance(loaded, BaseException) else None
    if exc is None:
        exc = _framework_signal(data, signal) or _stand_in(data)
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        exc.__notes__ = notes  # type: ignore[attr-defined,unused-ignore]
    notes.append(messages.CHILD_TRACEBACK.format(worker=worker) + "\n" + data["traceback"].rstrip())
    return exc


def _framework_signal(
    data: child.FailureData, signal: SignalFactory | None
) -> BaseException | None:
    kind = data["kind"]
    if signal is None or kind not in (CallKind.SKIPPED.value, CallKind.XFAILED.value):
        return None
    return signal(CallKind(kind), data["text"])


def _stand_in(data: child.FailureData) -> BaseException:
    base: type[BaseException] = Exception
    if data["kind"] == CallKind.INTERRUPTED.value:
        base = KeyboardInterrupt
    cls = type(data["qualname"].rsplit(".", 1)[-1], (base,), {})
    cls.__qualname__ = data["qualname"]
    cls.__module__ = data["module"]
    instance: BaseException = cls(data["text"])
    return instance


def failure_from_child(
    data: child.FailureData, worker: int, run: int, signal: SignalFactory | None = None
) -> CallFailure:
    return CallFailure(
        worker=worker,
        run=run,
        origin=FailureOrigin(data["type"], data["filename"], data["lineno"]),
        message=data["message"],
        exception=rebuild_exception(data, worker, signal),
        traceback_text=data["traceback"],
    )


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return messages.CRASH_NO_ANSWER
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return messages.CRASH_SIGNAL.format(signal=name, number=-exitcode)
    return messages.CRASH_EXIT.format(code=exitcode)


def user_stack(text: str) -> str:
    """A faulthandler dump without the frames of this plugin and of multiprocessing."""
    lines = [line for line in text.splitlines() if not _own_frame(line)]
    return "\n".join(lines).strip()


def _own_frame(line: str) -> bool:
    if any(marker in line for marker in OWN_FRAME_MARKERS):
        return True
    stripped = line.strip()
    if not stripped.startswith('File "'):
        return False
    return owncode.is_plugin_file(stripped[len('File "') :].split('"', 1)[0])


def stack_origin(stack: str) -> tuple[str, int] | None:
    """The innermost frame of the user's code in a faulthandler dump ("most recent call
    first"), by the rule of every origin (:func:`.owncode.is_user_file`)."""
    for line in stack.splitlines():
        line = line.strip()
        if line.startswith('File "') and '", line ' in line:
            filename, rest = line[len('File "') :].split('", line ', 1)
            number = rest.split()[0]
            if number.isdigit() and owncode.is_user_file(filename):
                return filename, int(number)
    return None
