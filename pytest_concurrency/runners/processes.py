"""Process mode: a persistent pool of worker processes, one IPC round trip per run.

The pool lives for one test item (one runner). Each child (see :mod:`.process_child`) is told
what to call once per series (``LOAD``: the pickled calls) and then once per run (``RUN``: the
run index and seed); the children meet at a :class:`multiprocessing.Barrier` so that they start
together, jitter their starts from the run seed (unless ``perturb=False``), call, and send
back plain data. A run costs
one message to each child and one answer from each, plus one barrier crossing among them.
What the messages carry, and how a failure or crash that comes back is rebuilt, is in
:mod:`.process_data`.

**Start method.** The default is ``forkserver`` where the platform has it (Linux, macOS, BSD),
else ``spawn``; ``start_method=`` on the marker, ``--concurrency-start-method``, the
``concurrency_start_method`` ini key or ``PYTEST_CONCURRENCY_START_METHOD`` choose another. The
reasons: ``fork`` copies a process that may hold other threads' locks (pytest-xdist workers run
execnet threads; pytest-timeout, the thread runner and many libraries start threads), which can
deadlock the child and warns on Python 3.12+; Python 3.14 made ``forkserver`` the default on
POSIX for the same reason, so choosing it gives the same behaviour on every version.
``forkserver`` starts a child from a clean single-threaded server process; with ``pytest`` and
this package preloaded in that server, a pool of four starts in about a tenth of a second.
The price, shared with ``spawn``, is that the body, its fixture values and arguments must
pickle: anything that does not is reported before any run, naming the fixture or argument and
the fix. ``fork`` needs no pickling (the children inherit the calls) and is there for the
cases that need it.

**Crashes and hangs.** A child that dies (segfault, ``os._exit``, SIGKILL) fails the run with
the worker, the signal or exit code, and its stack when faulthandler could write one; the pool
is then rebuilt. A run that outlives its deadline gets every unfinished child's stack (the
child's faulthandler writes it on ``SIGUSR1``) and then the children are killed. Children die
with pytest even if pytest is killed (:func:`.process_child.die_with_parent`), and ``close()``
reaps every one of them.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import forkserver, resource_tracker  # noqa: F401 - see below
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from typing import Any

from pytest_concurrency import messages
from pytest_concurrency.engine import owncode
from pytest_concurrency.engine.outcomes import (
    CallFailure,
    CallKind,
    FailureOrigin,
    RunRecord,
    add_note,
)
from pytest_concurrency.engine.seeds import run_seed
from pytest_concurrency.errors import ProcessModeError, WorkerCrashed
from pytest_concurrency.races.perturb import NO_PERTURBATION, Perturbation, SeededPerturbation
from pytest_concurrency.runners import child_coverage
from pytest_concurrency.runners import process_child as child
from pytest_concurrency.runners.barrier import process_barrier
from pytest_concurrency.runners.base import Series, WorkerCall, set_collateral_apart
from pytest_concurrency.runners.framework import NO_HOOKS, FrameworkHooks
from pytest_concurrency.runners.process_data import (
    call_location,
    describe_exit,
    failure_from_child,
    rebuild_exception,
    rewrites_asserts,
    same_calls,
    stack_origin,
    unpicklable_message,
    user_modules,
    user_stack,
)

__tracebackhide__ = True  # every frame here is the plugin's: pytest leaves them out

MODE = "processes"
# The fork server and the resource tracker make their locks when first imported: import them
# with this module (the session imports it for its header), before any test could patch the
# threading primitives (the lock-order watch does, in thread mode).
PREFERRED_START_METHODS = ("forkserver", "spawn")
FORKSERVER_PRELOAD = ("__main__", "pytest", "pytest_concurrency.runners.processes")
"""Modules the fork server imports once so that no child pays for them (this one imports the
child side, and the harness that the ``concurrency`` fixture needs when it is unpickled)."""
START_SECONDS = 120.0
"""Longest wait for a pool to start (imports in the children) or for a series to load."""
STACK_SECONDS = 2.0
"""Longest wait for a hung child to write its stack before it is killed."""
STOP_SECONDS = 5.0
"""Longest wait for an idle child to exit when told to, before it is terminated."""
REAP_SECONDS = 2.0
WORKER_NAME = "concurrency-worker-{}"
CRASH_GRACE_SECONDS = 1.0
"""After a child dies, how long the others of the run get to answer before the pool is killed."""


def default_start_method() -> str:
    available = multiprocessing.get_all_start_methods()
    return next(method for method in PREFERRED_START_METHODS if method in available)


def describe_start_method(start_method: str | None) -> str:
    """For the header: which start method process mode uses, and whether it was chosen."""
    if start_method is None:
        return messages.START_METHOD_DEFAULT.format(method=default_start_method())
    return messages.START_METHOD_CHOSEN.format(method=start_method)


# -- the pool ---------------------------------------------------------------------------------


@dataclass
class _Child:
    index: int
    process: Any  # multiprocessing.process.BaseProcess
    conn: Connection
    stack_path: str
    stack_read: int = 0

    def read_new_stack(self) -> str:
        try:
            with open(self.stack_path, encoding="utf-8", errors="replace") as handle:
                handle.seek(self.stack_read)
                text = handle.read()
        except OSError:
            return ""
        self.stack_read += len(text.encode("utf-8", errors="replace"))
        return text


@dataclass
class _Pool:
    children: list[_Child]
    start_barrier: Any
    user_barrier: Any
    directory: str
    inherited: Sequence[WorkerCall] | None


_LIVE_RUNNERS: weakref.WeakSet[ProcessRunner] = weakref.WeakSet()
_PRELOAD_DONE: list[bool] = []


@atexit.register
def _close_live_runners() -> None:
    """Runs before multiprocessing's own exit handler, which would wait for live children."""
    for runner in list(_LIVE_RUNNERS):
        runner.close()


def preload_forkserver(context: Any) -> None:
    """Preload pytest and the child side in the fork server, once, unless the user chose."""
    if _PRELOAD_DONE:
        return
    _PRELOAD_DONE.append(True)
    server = getattr(forkserver, "_forkserver", None)
    untouched = getattr(server, "_preload_modules", None) == ["__main__"]
    not_running = getattr(server, "_forkserver_pid", 0) is None
    if untouched and not_running:
        context.set_forkserver_preload(list(FORKSERVER_PRELOAD))


class ProcessRunner:
    """Runs series of runs in a pool of ``workers`` processes kept for one test item."""

    mode = MODE

    def __init__(
        self,
        workers: int,
        *,
        perturbation: Perturbation = NO_PERTURBATION,
        start_method: str | None = None,
        start_jitter: bool | None = None,
        hooks: FrameworkHooks = NO_HOOKS,
    ) -> None:
        self.workers = workers
        self.perturbation = perturbation
        self.hooks = hooks  # pytest's skip, xfail and assertion rewriting, lent by the plugin
        # seeded start offsets are part of perturbing the schedule: off with perturb=False
        self.start_jitter = (
            perturbation is not NO_PERTURBATION if start_jitter is None else start_jitter
        )
        self.start_method = start_method or default_start_method()
        self._context = multiprocessing.get_context(self.start_method)
        self._pool: _Pool | None = None
        self._usage_error: ProcessModeError | None = None
        self._usage_worker = workers  # the worker _usage_error names (workers: none)
        _LIVE_RUNNERS.add(self)

    # -- the Runner interface ---------------------------------------------------------------

    def run_series(self, series: Series) -> None:
        if series.workers != self.workers:
            raise ValueError(f"this pool has {self.workers} workers, the series {series.workers}")
        payload, inherited = self._payload(series.calls)
        try:
            pool = self._ready_pool(inherited, series)
            self._load(pool, payload, series)
            self._run_all(pool, series)
        except BaseException:
            self._discard_pool()
            raise
        if self._usage_error is not None:
            error, self._usage_error, self._usage_worker = self._usage_error, None, self.workers
            raise error

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            _stop_pool(pool)
        _LIVE_RUNNERS.discard(self)

    # -- before the first run -----------------------------------------------------------------

    def _payload(
        self, calls: Sequence[WorkerCall]
    ) -> tuple[bytes | None, Sequence[WorkerCall] | None]:
        """Pickled calls; with ``fork``, unpicklable calls are inherited by a new pool instead."""
        try:
            return pickled(list(calls)), None
        except Exception as error:
            if self.start_method == "fork":
                return None, calls
            raise ProcessModeError(unpicklable_message(calls, error, self.start_method)) from None

    def _ready_pool(self, inherited: Sequence[WorkerCall] | None, series: Series) -> _Pool:
        pool = self._pool
        if pool is not None and (inherited is None or same_calls(pool.inherited, inherited)):
            return pool
        self._discard_pool()
        self._pool = self._start_pool(inherited, series)
        return self._pool

    def _start_pool(self, inherited: Sequence[WorkerCall] | None, series: Series) -> _Pool:
        context = self._context
        if self.start_method == "forkserver":
            preload_forkserver(context)
        directory = tempfile.mkdtemp(prefix="pytest-concurrency-")
        pool = _Pool(
            [],
            context.Barrier(self.workers),
            process_barrier(self.workers, context),
            directory,
            inherited,
        )
        try:
            for index in range(self.workers):
                pool.children.append(self._start_child(pool, index, series))
            self._expect(pool, child.READY, time.monotonic() + START_SECONDS)
        except BaseException:
            _stop_pool(pool)
            raise
        return pool

    def _start_child(self, pool: _Pool, index: int, series: Series) -> _Child:
        stack_path = os.path.join(pool.directory, f"worker-{index}.stack")
        boot = {
            "worker": index,
            "workers": self.workers,
            "timeout": series.timeout,
            "parent_pid": os.getpid(),
            "stack_path": stack_path,
            "sys_path": list(sys.path),
            "cwd": os.getcwd(),
            "environ": dict(os.environ),
            "coverage": child_coverage.parent_spec(),
            "code_under_test": code_under_test_roots(),
        }
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(  # type: ignore[attr-defined]
            target=child.child_main,
            name=WORKER_NAME.format(index),
            args=(boot, child_end, pool.start_barrier, pool.user_barrier, pool.inherited),
        )
        process.start()
        child_end.close()
        return _Child(index, process, parent_end, stack_path)

    def _load(self, pool: _Pool, payload: bytes | None, series: Series) -> None:
        modules = user_modules(series.calls) if payload is not None else []
        message = (
            child.LOAD,
            payload,
            modules,
            self._assert_rewriter(modules),
            series.keep_results,
            series.timeout,
            self.start_jitter,
            self._perturbation_spec(),
        )
        data = pickled(message)
        for worker in pool.children:
            worker.conn.send_bytes(data)
        self._expect(pool, child.LOADED, time.monotonic() + max(START_SECONDS, series.timeout))

    def _assert_rewriter(self, modules: Sequence[tuple[str, str | None]]) -> bytes | None:
        """The framework's assert rewriter, pickled for the children (who unpickle it only when
        they import a module, and fall back to a plain import if that fails), when pytest
        rewrote these modules' asserts in the parent."""
        rewriter = self.hooks.rewrite_asserts
        if rewriter is None or not rewrites_asserts(modules):
            return None
        return pickle.dumps(rewriter)

    def _perturbation_spec(self) -> tuple[list[str], int] | None:
        perturbation = self.perturbation
        if isinstance(perturbation, SeededPerturbation):
            return list(perturbation.code_filter.roots), perturbation.seed
        return None

    def _expect(self, pool: _Pool, tag: str, deadline: float) -> None:
        """Wait for ``tag`` from every child; a child that fails or dies is a clear error."""
        pending = {worker.index for worker in pool.children}
        while pending:
            for index, message in self._answers(pool, pending, deadline):
                pending.discard(index)
                if message is None:
                    code = pool.children[index].process.exitcode
                    raise ProcessModeError(
                        messages.WORKER_DIED_AT_START.format(
                            worker=index,
                            how=describe_exit(code),
                            stack=user_stack(pool.children[index].read_new_stack()),
                        )
                    )
                if message[0] == child.LOAD_ERROR:
                    raise ProcessModeError(
                        messages.WORKER_LOAD_FAILED.format(worker=index, text=message[1].rstrip())
                    )
            if pending and time.monotonic() >= deadline:
                raise ProcessModeError(
                    messages.WORKER_START_TIMEOUT.format(
                        seconds=START_SECONDS, workers=", ".join(map(str, sorted(pending)))
                    )
                )

    def _answers(
        self, pool: _Pool, pending: set[int], deadline: float
    ) -> list[tuple[int, tuple[Any, ...] | None]]:
        """Answers that arrived before ``deadline``; None for a child that died instead."""
        children = [pool.children[index] for index in sorted(pending)]
        handles: list[Any] = [worker.conn for worker in children]
        handles += [worker.process.sentinel for worker in children]
        ready = wait(handles, timeout=max(0.0, deadline - time.monotonic()))
        answers: list[tuple[int, tuple[Any, ...] | None]] = []
        for worker in children:
            if worker.conn in ready or worker.process.sentinel in ready:
                answers.append((worker.index, _receive(worker, ready)))
        return answers

    # -- the runs -------------------------------------------------------------------------------

    def _run_all(self, pool: _Pool, series: Series) -> None:
        index = series.plan.first_index
        while series.plan.has_run(index):
            record, pool_intact = self._one_run(pool, series, index)
            set_collateral_apart(record)
            if self._usage_error is not None:
                return
            go_on = series.on_run_done(record)
            if not pool_intact:
                self._discard_pool()
                return
            if not go_on or record.interrupt is not None:
                return
            index += 1

    def _one_run(self, pool: _Pool, series: Series, index: int) -> tuple[RunRecord, bool]:
        seed = run_seed(series.seed, index)
        record = RunRecord(
            index=index,
            seed=seed,
            workers=self.workers,
            results=[None] * self.workers if series.keep_results else [],
        )
        for barrier in (pool.start_barrier, pool.user_barrier):
            if barrier.broken:
                barrier.reset()
        message = pickled((child.RUN, index, seed))
        for each in pool.children:
            each.conn.send_bytes(message)
        started = time.monotonic()
        deadline = series.run_deadline(started)
        pending = set(range(self.workers))
        crashed = False
        while pending:
            for worker, answer in self._answers(pool, pending, deadline):
                pending.discard(worker)
                if answer is None:
                    record.failures.append(self._crash(pool.children[worker], index, series))
                    crashed = True
                    deadline = min(deadline, time.monotonic() + CRASH_GRACE_SECONDS)
                else:
                    self._take_answer(record, worker, answer)
            if pending and time.monotonic() >= deadline:
                if not crashed:  # after a crash the others are collateral, not hung
                    record.hung_after = deadline - started
                    self._hang(pool, record, pending, series)
                return record, False
        series.run_finished(started)
        return record, not crashed

    def _take_answer(self, record: RunRecord, worker: int, answer: tuple[Any, ...]) -> None:
        _, _, result_bytes, failure, result_error = answer
        if result_error is not None and worker < self._usage_worker:  # name the first worker
            self._usage_worker = worker
            self._usage_error = ProcessModeError(
                messages.UNPICKLABLE_RESULT.format(
                    worker=worker, type=result_error[0], error=result_error[1]
                )
            )
        if result_bytes is not None:
            record.results[worker] = pickle.loads(result_bytes)
        if failure is None:
            return
        kind = failure["kind"]
        signal = self.hooks.signal
        if kind == CallKind.FAILED.value:
            record.failures.append(failure_from_child(failure, worker, record.index, signal))
        elif kind == CallKind.INTERRUPTED.value:
            record.interrupt = rebuild_exception(failure, worker, signal)
        else:
            record.signals.append((worker, rebuild_exception(failure, worker, signal)))

    def _crash(self, worker: _Child, run: int, series: Series) -> CallFailure:
        worker.process.join(REAP_SECONDS)
        stack = user_stack(worker.read_new_stack())
        how = describe_exit(worker.process.exitcode)
        text = messages.WORKER_CRASHED.format(
            worker=worker.index, pid=worker.process.pid, how=how, run=run
        )
        exc = WorkerCrashed(text)
        if stack:
            add_note(exc, stack)
        filename, lineno = stack_origin(stack) or call_location(series.calls[worker.index])
        return CallFailure(
            worker=worker.index,
            run=run,
            origin=FailureOrigin(WorkerCrashed.__qualname__, filename, lineno),
            message=text,
            exception=exc,
            traceback_text=stack,
        )

    def _hang(self, pool: _Pool, record: RunRecord, pending: set[int], series: Series) -> None:
        """Ask each unfinished child for its stack (faulthandler), then stop the pool; near
        pytest-timeout's deadline, wait for the stacks only half of the margin left."""
        record.hung_workers = sorted(pending)
        until = time.monotonic() + STACK_SECONDS
        outer = series.plan.outer
        if outer is not None:
            until = min(until, outer.hang_at + outer.margin / 2)
        children = [pool.children[index] for index in record.hung_workers]
        record.stacks = capture_stacks(children, until)

    def _discard_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            _kill_pool(pool)


def pickled(message: object) -> bytes:
    """``message`` pickled for a child, as bytes. ``Connection.send`` and
    ``ForkingPickler.dumps`` hold a view on a ``BytesIO``; caught in a traceback (pytest-timeout
    interrupting a wait) that becomes a reference cycle which the 3.12.0-1 collector can crash
    on (CPython gh-111049)."""
    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(message)
    return buffer.getvalue()


def _receive(worker: _Child, ready: Sequence[object]) -> tuple[Any, ...] | None:
    """The child's answer; None if it died without one (its pipe closed or its process ended)."""
    try:
        if worker.conn in ready or worker.conn.poll():
            answer: tuple[Any, ...] = worker.conn.recv()
            return answer
    except (EOFError, OSError):
        return None
    return None


def capture_stacks(workers: Sequence[_Child], deadline: float) -> dict[int, str]:
    number = getattr(signal, child.STACK_SIGNAL_NAME, None)
    if number is None:
        return {}
    for worker in workers:
        with contextlib.suppress(OSError):
            if worker.process.pid is not None:
                os.kill(worker.process.pid, number)
    stacks: dict[int, str] = {}
    waiting = list(workers)
    while waiting and time.monotonic() < deadline:
        time.sleep(0.02)
        for worker in list(waiting):
            text = worker.read_new_stack()
            if text:
                time.sleep(0.02)  # let the dump finish: it is written frame by frame
                stacks[worker.index] = user_stack(text + worker.read_new_stack())
                waiting.remove(worker)
    return stacks


def _kill_pool(pool: _Pool) -> None:
    for worker in pool.children:
        if worker.process.is_alive():
            with contextlib.suppress(OSError):
                worker.process.kill()
    _reap(pool)


def _stop_pool(pool: _Pool) -> None:
    stop = pickled((child.STOP,))
    for worker in pool.children:
        with contextlib.suppress(OSError, ValueError):
            worker.conn.send_bytes(stop)
    deadline = time.monotonic() + STOP_SECONDS
    for worker in pool.children:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            with contextlib.suppress(OSError):
                worker.process.kill()
    _reap(pool)


def _reap(pool: _Pool) -> None:
    pids = [worker.process.pid for worker in pool.children]
    for worker in pool.children:
        worker.process.join(REAP_SECONDS)
        with contextlib.suppress(OSError, ValueError):
            worker.conn.close()
        with contextlib.suppress(ValueError):
            worker.process.close()
    shutil.rmtree(pool.directory, ignore_errors=True)
    child_coverage.merge_children(pids)  # the lines the children ran, measured in them


def code_under_test_roots() -> list[str] | None:
    """The roots of the code under test now, for a child's origins to follow the same answer
    (:func:`.owncode.is_user_file`); None where none was given."""
    judge = owncode.current_filter()
    return None if judge is None else list(judge.roots)


def build_runner(
    workers: int, perturbation: Perturbation, options: dict[str, Any]
) -> ProcessRunner:
    """The registry's entry for process mode: ``start_method`` and ``hooks`` as options."""
    return ProcessRunner(workers, perturbation=perturbation, **options)
