"""What the test framework lends the runners, which never import it themselves.

The runners are plain machinery: they import neither pytest nor ``_pytest``. Where process mode
needs pytest's own behaviour, the plugin hands a :class:`FrameworkHooks` to the runner it makes
(see ``runner_options`` in :mod:`pytest_concurrency.plugin.calls`):

* in the parent, :attr:`FrameworkHooks.signal` rebuilds a skip or xfail signalled in a worker
  process whose exception did not unpickle, as the framework's own outcome;
* in each child, :attr:`FrameworkHooks.rewrite_asserts` rewrites the asserts of the test
  modules it imports, so that a failing ``assert`` explains itself as it would in the parent.
  It is sent to the children pickled, so it must be a module-level function.

Without hooks (a runner made by hand) a skip that did not unpickle comes back as a stand-in
exception of the same name, and children import test modules without rewriting.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass

from pytest_concurrency.engine.outcomes import CallKind

SignalFactory = Callable[[CallKind, str], "BaseException | None"]
"""``(kind, text)`` to the framework's exception for that signal, or None for another kind."""
AssertRewriter = Callable[[ast.Module, bytes, str], None]
"""``(tree, source, filename)``: rewrite the asserts of a module's tree in place."""


@dataclass(frozen=True)
class FrameworkHooks:
    signal: SignalFactory | None = None
    rewrite_asserts: AssertRewriter | None = None


NO_HOOKS = FrameworkHooks()
