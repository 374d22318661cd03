"""Thread-unsafe test code, recognised by reading it (``ast``) before it runs concurrently.

``--concurrency-all`` runs a test once, normally, when its code (the test function, the
fixtures it requests, a TestCase's setUp and tearDown) uses something every worker in one
process would share and undo under the others: a patched name, a tracer, the working
directory, the environment, ``sys.modules``, ``sys.stdout``, warning filters, a doctest run,
native code, Hypothesis' engine, or one ``tmp_path`` folder for every worker. Each finding is
a reason for the summary; a false alarm avoided costs one test's concurrent runs, a false
alarm shown costs the auditor's trust. Extra names (``concurrency_unsafe_names`` in the ini
file) are matched the same way as the built-in calls. Pure module: no pytest import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence

from pytest_concurrency import messages


def _table(*rows: tuple[str, tuple[str, ...]]) -> dict[str, str]:
    """Names (dotted, matched on their last parts) and the reason each gives, from rows of
    (reason, names)."""
    return {name: reason for reason, names in rows for name in names}


MOCK_PATCH = ("mock.patch", "patch", "patch.object", "patch.dict", "patch.multiple")
CALLS: dict[str, str] = _table(
    (messages.UNSAFE_MOCK_PATCH, MOCK_PATCH),
    (
        messages.UNSAFE_TRACE,
        ("sys.settrace", "sys.setprofile", "threading.settrace", "threading.setprofile"),
    ),
    (messages.UNSAFE_CHDIR, ("os.chdir", "os.fchdir", "contextlib.chdir", "chdir")),
    (messages.UNSAFE_ENVIRON, ("os.putenv", "os.unsetenv", "setenv", "delenv")),
    (
        messages.UNSAFE_DOCTEST,
        (
            "doctest.testmod",
            "doctest.testfile",
            "doctest.run_docstring_examples",
            "doctest.DocTestRunner",
            "doctest.DocTestSuite",
            "doctest.DocFileSuite",
        ),
    ),
    (
        messages.UNSAFE_REDIRECT,
        ("redirect_stdout", "redirect_stderr", "contextlib.redirect_stdout"),
    ),
    (messages.UNSAFE_SYS_MODULES, ("importlib.reload", "reload")),
    (
        messages.UNSAFE_WARNING_FILTERS,
        (
            "warnings.simplefilter",
            "warnings.filterwarnings",
            "warnings.resetwarnings",
            "assertWarns",
            "assertWarnsRegex",
        ),
    ),
    (
        messages.UNSAFE_RANDOM_SEED,
        ("seed", "random.seed", "random.setstate", "np.random.seed", "numpy.random.seed"),
    ),
    (
        messages.UNSAFE_LOGGING,
        ("assertLogs", "assertNoLogs", "logging.basicConfig", "logging.disable"),
    ),
    (
        messages.UNSAFE_PROCESS_SETTING,
        (
            "locale.setlocale",
            "time.tzset",
            "signal.signal",
            "sys.setrecursionlimit",
            "sys.setswitchinterval",
            "gc.disable",
            "socket.setdefaulttimeout",
        ),
    ),
)
"""Calls and the reason each gives."""
DECORATORS: dict[str, str] = _table(
    (messages.UNSAFE_HYPOTHESIS, ("given", "hypothesis.given")),
    (messages.UNSAFE_MOCK_PATCH, MOCK_PATCH),
)
MUTATED_GLOBALS: dict[str, str] = {
    "os.environ": messages.UNSAFE_ENVIRON,
    "environ": messages.UNSAFE_ENVIRON,
    "sys.modules": messages.UNSAFE_SYS_MODULES,
    "sys.path": messages.UNSAFE_SYS_PATH,
    "sys.stdout": messages.UNSAFE_REDIRECT,
    "sys.stderr": messages.UNSAFE_REDIRECT,
    "sys.stdin": messages.UNSAFE_REDIRECT,
}
"""Process-wide objects a test must not assign, delete or mutate in place."""
MUTATORS = frozenset(
    {"pop", "popitem", "update", "setdefault", "clear", "insert", "append", "remove", "extend"}
)
ROOT_MODULES = {"ctypes": messages.UNSAFE_CTYPES}
"""Any use of these modules' names."""
TMP_FIXTURES = frozenset({"tmp_path", "tmpdir"})
WRITES = frozenset(
    {"write_text", "write_bytes", "touch", "mkdir", "makedirs", "open", "write", "symlink_to",
     "rename", "replace", "unlink", "rmtree", "remove", "copy", "copyfile", "ensure"}
)  # fmt: skip
"""Calls that write into a folder: with ``tmp_path`` (one folder, set up once, for every
worker) they collide."""


def dotted(node: ast.AST) -> str | None:
    """``os.environ`` for ``os.environ``; None for anything but names and attributes. A call
    inside the chain counts as its callee: ``mock.patch(...).start`` is ``mock.patch.start``
    (see :func:`callee_names` for the callee alone)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Call):
        inner = dotted(node.func)
        if inner is None:
            return ".".join(reversed(parts)) or None
        parts.append(inner)
    elif isinstance(node, ast.Name):
        parts.append(node.id)
    else:
        return ".".join(reversed(parts)) or None
    return ".".join(reversed(parts))


def callee_names(func: ast.AST) -> list[str]:
    """The names a call is matched by: its whole chain, and the callee of a call inside it
    (``mock.patch(...).start()`` is a use of ``mock.patch``)."""
    names = []
    name = dotted(func)
    if name is not None:
        names.append(name)
    node = func
    while isinstance(node, ast.Attribute):
        node = node.value
    if isinstance(node, ast.Call):
        names.extend(callee_names(node.func))
    return names


def matches(name: str, table: Iterable[str]) -> str | None:
    """The entry of ``table`` that ``name`` ends with, at a dot; None if none."""
    for entry in table:
        if name == entry or name.endswith("." + entry):
            return entry
    return None


def parse(source: str) -> ast.AST | None:
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def unsafe_reasons(
    tree: ast.AST, *, extra_names: Sequence[str] = (), writes_tmp_path: bool = False
) -> list[str]:
    """Why this code is thread-unsafe (reasons in the order found, each once); empty if no
    reason. ``writes_tmp_path``: the test requests ``tmp_path`` or ``tmpdir``, so that a
    write into a folder collides between the workers."""
    found: dict[str, None] = {}
    extra = {name: messages.UNSAFE_CONFIGURED.format(name=name) for name in extra_names}
    for node in ast.walk(tree):
        for reason in node_reasons(node, extra, writes_tmp_path):
            found.setdefault(reason, None)
    return list(found)


def node_reasons(node: ast.AST, extra: dict[str, str], writes_tmp_path: bool) -> Iterable[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for decorator in node.decorator_list:
            name = dotted(decorator)
            entry = matches(name, [*DECORATORS, *extra]) if name else None
            if entry is not None:
                yield DECORATORS.get(entry) or extra[entry]
    elif isinstance(node, ast.Call):
        yield from call_reasons(node, extra, writes_tmp_path)
    elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for target in targets:
            reason = mutated_global(target)
            if reason is not None:
                yield reason
    elif isinstance(node, (ast.Name, ast.Attribute)):
        name = dotted(node)
        root = name.split(".", 1)[0] if name else None
        if root in ROOT_MODULES:
            yield ROOT_MODULES[root]


def call_reasons(node: ast.Call, extra: dict[str, str], writes_tmp_path: bool) -> Iterable[str]:
    func = node.func
    last = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if writes_tmp_path and last in WRITES:
        yield messages.UNSAFE_TMP_PATH
    for name in callee_names(func):
        entry = matches(name, [*CALLS, *extra])
        if entry is not None:
            yield CALLS.get(entry) or extra[entry]
    if isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
        owner = dotted(node.func.value)
        if owner is not None and owner in MUTATED_GLOBALS:
            yield MUTATED_GLOBALS[owner]


def mutated_global(target: ast.AST) -> str | None:
    """The reason when an assignment or ``del`` target is a process-wide object, or an
    item of one (``os.environ["X"] = ...``, ``del sys.modules[name]``, ``sys.stdout = f``)."""
    node = target.value if isinstance(target, ast.Subscript) else target
    name = dotted(node)
    if name is None:
        return None
    return MUTATED_GLOBALS.get(name) if isinstance(target, (ast.Subscript, ast.Attribute)) else None
