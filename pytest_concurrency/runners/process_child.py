"""The worker-process side of process mode: it runs inside each child and stands alone.

A child is started once per test item (see :mod:`.processes`) and then serves runs over one
:class:`multiprocessing.connection.Connection` until told to stop or its parent goes away. It
imports only the standard library, :mod:`pytest_concurrency.engine.context` (so that the
``concurrency`` fixture answers ``.worker``, ``.run`` and ``.barrier()`` in the child) and the
pure :mod:`pytest_concurrency.engine.outcomes` (with :mod:`~pytest_concurrency.engine.owncode`,
which places each origin in the user's code); pytest itself only if the test module imports it
or the parent lends pytest's assertion rewriting (:class:`~.framework.FrameworkHooks`).
Everything it sends back is plain data: tuples of strings, numbers and pickled bytes.

The protocol, one tuple per message, tag first:

* parent -> child: ``(LOAD, payload, modules, rewriter, keep_results, timeout, jitter,
  perturbation)``
  (``payload`` is the pickled list of calls, or None to use the calls the child inherited at
  start; ``modules`` are imported first, see :func:`import_user_modules`, their asserts
  rewritten by ``rewriter``, the pickled assert rewriter the plugin lends, or None),
  ``(RUN, run_index, run_seed)``, ``(STOP,)``;
* child -> parent: ``(READY, pid)``, ``(LOADED,)``, ``(LOAD_ERROR, text)``,
  ``(DONE, run_index, result_bytes, failure, result_error)`` where ``failure`` is a
  :data:`FailureData` dict or None.

Starts are jittered from the run seed: run 0 starts in lockstep, later runs hold each worker
back by a seeded number of microseconds (busy-waiting, which is exact, unlike a short sleep),
so that the windows of cross-process read-modify-write races meet at different offsets.
"""

from __future__ import annotations

import contextlib
import ctypes  # here, so that the fork server preloads it for every child
import faulthandler
import importlib
import importlib.util
import linecache
import os
import pickle
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from types import ModuleType, TracebackType
from typing import Any, Protocol

from pytest_concurrency.engine.context import CURRENT, WorkerContext
from pytest_concurrency.engine.outcomes import (
    CallKind,
    classify,
    exception_text,
    first_line,
    origin_of,
)
from pytest_concurrency.runners import child_coverage
from pytest_concurrency.runners.framework import AssertRewriter

LOAD = "load"
RUN = "run"
STOP = "stop"
READY = "ready"
LOADED = "loaded"
LOAD_ERROR = "load_error"
DONE = "done"

MODE = "processes"
JITTER_CHOICES = (0.0, 2e-5, 1e-4, 5e-4)
"""Largest start offset of a run, in seconds, drawn per run from the run seed (run 0: none)."""
STACK_SIGNAL_NAME = "SIGUSR1"
"""The parent sends this to a hung child; faulthandler then writes every thread's stack."""
PR_SET_PDEATHSIG = 1
PARENT_POLL_SECONDS = 0.5

FailureData = dict[str, Any]
"""A failed or signalling call, as plain data: see :func:`failure_data`."""


class BarrierLike(Protocol):
    def wait(self, timeout: float | None = None) -> object: ...

    def abort(self) -> None: ...


# -- start-up: die with the parent, dump stacks on request, import the user's modules -------


def die_with_parent(parent_pid: int) -> None:
    """Make sure this child never outlives pytest, even if pytest is killed with SIGKILL.

    On Linux the kernel does it (``PR_SET_PDEATHSIG``); elsewhere a daemon thread watches the
    parent's pid. With ``forkserver`` the kernel parent is the fork server, which exits when
    pytest does, so either way the child follows.
    """
    original = os.getppid()
    release_fork_server()
    if sys.platform.startswith("linux") and _set_parent_death_signal():
        if os.getppid() != original:  # the parent died before the signal was armed
            os._exit(1)
        return
    import threading

    def watch() -> None:
        while os.getppid() == original:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="concurrency-parent-watch", daemon=True).start()


def release_fork_server() -> None:
    """Let go of the fork server's "alive" pipe, so that the server exits with pytest.

    Every ``forkserver`` child inherits the write end of the pipe on which the server waits
    for end of file before it exits. Held by our children, it keeps the server (their kernel
    parent) alive after pytest is killed, and the server keeps them alive in turn.
    """
    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if server is None or alive is None or getattr(server, "_forkserver_pid", 0) is not None:
        return  # not a child of a fork server (or the server's owner: keep it)
    with contextlib.suppress(OSError):
        os.close(alive)
    server._forkserver_alive_fd = None


def _set_parent_death_signal() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def arm_stack_dumps(stack_path: str) -> None:
    """Fatal signals and the parent's stack request both write stacks to ``stack_path``."""
    stream = open(stack_path, "a")  # noqa: SIM115 - kept open for the life of the process
    faulthandler.enable(stream, all_threads=True)
    number = getattr(signal, STACK_SIGNAL_NAME, None)
    if number is not None:
        faulthandler.register(number, stream, all_threads=True, chain=False)


def import_user_modules(
    modules: Sequence[tuple[str, str | None]], rewriter: bytes | None = None
) -> None:
    """Import the modules the calls live in, so that unpickling finds them.

    Each module is imported by name; when that fails (``--import-mode=importlib``, a rootdir
    that is not on ``sys.path``) it is loaded from its file under the same name. With a
    ``rewriter`` (pytest's assertion rewriting, pickled by the parent; see
    :class:`~.framework.FrameworkHooks`) test modules get their asserts rewritten when it
    loads, so that an ``assert`` that fails in a child explains itself as it would in the parent.
    """
    for name, filename in modules:
        if name in sys.modules:
            continue
        loaded = _load_rewritten(name, filename, rewriter) if rewriter and filename else None
        if loaded is None:
            try:
                importlib.import_module(name)
            except ImportError:
                if not filename:
                    raise
                _load_from_file(name, filename)


def _load_rewritten(name: str, filename: str, rewriter: bytes) -> ModuleType | None:
    try:
        rewrite: AssertRewriter = pickle.loads(rewriter)
        return _load_from_file(name, filename, rewrite=rewrite)
    except Exception:  # rewriting is a nicety: fall back to a plain import
        sys.modules.pop(name, None)
        return None


def _load_from_file(
    name: str, filename: str, *, rewrite: AssertRewriter | None = None
) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, filename)
    if spec is None:
        raise ImportError(f"cannot load {name} from {filename}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        if rewrite is not None:
            import ast

            with open(filename, "rb") as handle:
                source = handle.read()
            tree = ast.parse(source, filename)
            rewrite(tree, source, filename)
            exec(compile(tree, filename, "exec", dont_inherit=True), module.__dict__)
        else:
            assert spec.loader is not None
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def adopt_parent_environment(boot: dict[str, Any]) -> None:
    """The parent's ``sys.path``, working directory and environment as they are now.

    A ``forkserver`` child is a copy of the server as it was when it started, maybe several
    tests ago (pytester and ``monkeypatch.chdir`` move the working directory; fixtures set
    environment variables): the body must see what it would see in the parent.
    """
    sys.path[:] = [*boot["sys_path"], *(p for p in sys.path if p not in boot["sys_path"])]
    os.chdir(boot["cwd"])
    if os.environ != boot["environ"]:
        os.environ.clear()
        os.environ.update(boot["environ"])


# -- one call, as plain data ---------------------------------------------------------------


def failure_data(exc: BaseException, kind: CallKind) -> FailureData:
    """Everything the parent needs to report ``exc`` as if it had been raised there."""
    origin = origin_of(exc)
    message = first_line(exc)
    if not message and isinstance(exc, AssertionError):
        message = _source_line(origin.filename, origin.lineno)
    pickled: bytes | None = None
    try:
        pickled_now = pickle.dumps(exc)
        pickle.loads(pickled_now)  # only send what the parent will be able to load
        pickled = pickled_now
    except Exception:
        pickled = None
    return {
        "kind": kind.value,
        "type": origin.exc_type,
        "module": type(exc).__module__,
        "qualname": type(exc).__qualname__,
        "message": message,
        "text": exception_text(exc),
        "filename": origin.filename,
        "lineno": origin.lineno,
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "pickled": pickled,
    }


def user_traceback(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame that is not this module's: it starts in user code."""
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def _source_line(filename: str, lineno: int) -> str:
    """The source of the raising line (a bare ``assert`` has no message of its own)."""
    return linecache.getline(filename, lineno).strip()


def start_offset(run_index: int, run_seed: int, worker: int) -> float:
    """Seconds this worker waits after the start barrier in this run: seeded, 0 in run 0."""
    if run_index == 0:
        return 0.0
    rng = random.Random(run_seed)
    largest = rng.choice(JITTER_CHOICES)
    return random.Random(run_seed * 4099 + worker).uniform(0.0, largest) if largest else 0.0


def busy_wait(seconds: float) -> None:
    if seconds <= 0:
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# -- the serving loop ----------------------------------------------------------------------


class ChildWorker:
    """One worker process: loads calls, runs them when told, reports plain data."""

    def __init__(
        self,
        boot: dict[str, Any],
        conn: Connection,
        start_barrier: BarrierLike,
        user_barrier: BarrierLike,
        inherited: Sequence[Callable[[], object]] | None,
    ):
        self.index: int = boot["worker"]
        self.conn = conn
        self.start_barrier = start_barrier
        self.user_barrier = user_barrier
        self.inherited = inherited
        self.calls: Sequence[Callable[[], object]] = ()
        self.keep_results = False
        self.jitter = True
        self.timeout: float = boot["timeout"]
        self.perturbation: Any = None
        self.context = WorkerContext(
            worker=self.index,
            run=-1,
            workers=boot["workers"],
            mode=MODE,
            seed=0,
            wait_at_barrier=self.wait_at_user_barrier,
        )

    def serve(self) -> None:
        CURRENT.set(self.context)
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return
            tag = message[0]
            if tag == RUN:
                self.run(message[1], message[2])
            elif tag == LOAD:
                self.load(*message[1:])
            else:
                return

    def load(
        self,
        payload: bytes | None,
        modules: Sequence[tuple[str, str | None]],
        rewriter: bytes | None,
        keep_results: bool,
        timeout: float,
        jitter: bool,
        perturbation: tuple[list[str], int] | None,
    ) -> None:
        try:
            import_user_modules(modules, rewriter)
            calls = self.inherited if payload is None else pickle.loads(payload)
            if calls is None:
                raise RuntimeError("no calls were sent and none were inherited")
            self.calls, self.keep_results, self.timeout = calls, keep_results, timeout
            self.jitter = jitter
            if self.perturbation is not None:
                self.perturbation.series_finished()
                self.perturbation = None
            self.perturbation = _make_perturbation(perturbation)
        except BaseException:
            self.conn.send((LOAD_ERROR, traceback.format_exc()))
            return
        self.conn.send((LOADED,))

    def run(self, run_index: int, run_seed: int) -> None:
        self.context.run, self.context.seed = run_index, run_seed
        result: object = None
        failure: FailureData | None = None
        try:
            self.start_barrier.wait(self.timeout)
            if self.jitter:
                busy_wait(start_offset(run_index, run_seed, self.index))
            result = self.call(run_index, run_seed)
        except BaseException as exc:  # every failure is kept, none is lost
            exc.__traceback__ = user_traceback(exc.__traceback__)
            kind = classify(exc)
            failure = failure_data(exc, kind)
            if kind in (CallKind.FAILED, CallKind.INTERRUPTED):
                self.user_barrier.abort()
        self.reply(run_index, result, failure)

    def call(self, run_index: int, run_seed: int) -> object:
        perturbation = self.perturbation
        if perturbation is not None:
            perturbation.call_started(self.index, run_index, run_seed)
        try:
            return self.calls[self.index]()
        finally:
            if perturbation is not None:
                perturbation.call_finished()

    def reply(self, run_index: int, result: object, failure: FailureData | None) -> None:
        result_bytes: bytes | None = None
        result_error: tuple[str, str] | None = None
        if self.keep_results and failure is None:
            try:
                result_bytes = pickle.dumps(result)
            except Exception as exc:
                result_error = (type(result).__qualname__, first_line(exc))
        self.conn.send((DONE, run_index, result_bytes, failure, result_error))

    def wait_at_user_barrier(self, timeout: float | None) -> None:
        __tracebackhide__ = True
        self.user_barrier.wait(timeout)


def _make_perturbation(spec: tuple[list[str], int] | None) -> Any:
    """The same seeded perturbation as in thread mode: it widens cross-process windows too."""
    if spec is None:
        return None
    from pathlib import Path

    from pytest_concurrency.races.perturb import make_perturbation

    roots, seed = spec
    perturbation = make_perturbation(enabled=True, roots=[Path(r) for r in roots], seed=seed)
    perturbation.series_started()
    return perturbation


def judge_as_the_parent(roots: Sequence[str] | None) -> None:
    """The parent's code under test answers "is this the user's code?" here too."""
    if roots is not None:
        from pathlib import Path

        from pytest_concurrency.engine import owncode

        owncode.use_session_roots(lambda: [Path(root) for root in roots])


def child_main(
    boot: dict[str, Any],
    conn: Connection,
    start_barrier: BarrierLike,
    user_barrier: BarrierLike,
    inherited: Sequence[Callable[[], object]] | None = None,
) -> None:
    """Entry point of a worker process (the target given to ``multiprocessing.Process``):
    measured by coverage when the parent is, start-up included."""
    child_coverage.run_measured(
        boot.get("coverage"), _serve, boot, conn, start_barrier, user_barrier, inherited
    )


def _serve(
    boot: dict[str, Any],
    conn: Connection,
    start_barrier: BarrierLike,
    user_barrier: BarrierLike,
    inherited: Sequence[Callable[[], object]] | None,
) -> None:
    die_with_parent(boot["parent_pid"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    arm_stack_dumps(boot["stack_path"])
    adopt_parent_environment(boot)
    judge_as_the_parent(boot.get("code_under_test"))
    conn.send((READY, os.getpid()))
    ChildWorker(boot, conn, start_barrier, user_barrier, inherited).serve()
