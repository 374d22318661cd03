"""asyncio mode's event loop: a selector loop that orders ready task steps from the seed.

The loop is a :class:`ScheduledEventLoop`: a stock selector loop whose ``_run_once`` first lets
a :class:`ReadyOrder` arrange the callbacks that are ready for this pass. Only *task steps* are
moved (a task starting, or resuming after an ``await``); other callbacks (transports, futures'
done callbacks) keep asyncio's documented FIFO order, so no protocol sees its calls reordered.
How a run arranges them comes from its index and seed (:func:`order_for_run`; with
``perturb=False`` the runner keeps FIFO order in every run):

* run 0 keeps plain FIFO order, which is what ``asyncio.gather`` on a fresh loop does;
* odd runs shuffle the ready task steps of every pass;
* even runs from 2 on shuffle and also *hold back* a step for one or two passes now and then,
  which breaks the lockstep of identical tasks: a race whose window one task has to enter
  while another is a step or two further on never shows in FIFO order, and shows here.

The choices depend only on the seed and on the sequence of ready queues, so one seed is one
schedule: code that awaits only other tasks, futures, locks, queues and ``sleep(0)`` is
interleaved the same way every time (timers and real I/O complete when the clock says).

The loop runs in a thread of its own (:class:`LoopHost`), owned by the runner for one test
item, or by the session for an ``async def`` test that drives the harness. The thread that
waits for it watches each run's deadline (:class:`RunWatch`): a loop that a synchronous call
blocks is reported with the thread's stack and abandoned, so pytest never hangs. The stacks
of hung tasks and of a blocked loop leave out the plugin's and asyncio's frames.

A loop the plugin did not make (pytest-asyncio's, which ran the test's async fixtures) can be
borrowed instead (:class:`AdoptedLoop`): hosted and watched the same way, its ready task steps
arranged the same way when it is one of asyncio's own loops (FIFO otherwise: :func:`can_order`),
then handed back to its owner stopped, not closed, with nothing of the plugin's left on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from pytest_concurrency import messages
from pytest_concurrency.engine.context import CURRENT
from pytest_concurrency.engine.leaks import note_leftover_tasks
from pytest_concurrency.engine.outcomes import RunRecord, without_traceback
from pytest_concurrency.engine.seeds import derive_seed
from pytest_concurrency.errors import LoopBlocked
from pytest_concurrency.runners.aio_clock import (
    EXACT,
    JITTERED,
    ClockedSelector,
    TimerMove,
    VirtualClock,
    threads_started_since,
)
from pytest_concurrency.runners.aio_inject import CancelPlan
from pytest_concurrency.runners.aio_stacks import is_own_frame as is_own_frame
from pytest_concurrency.runners.aio_stacks import task_stack as task_stack
from pytest_concurrency.runners.aio_stacks import user_stack
from pytest_concurrency.runners.aio_trace import StepTrace

__tracebackhide__ = True  # every frame here is the plugin's: pytest leaves them out

POLL_SECONDS = 0.05
CANCEL_SECONDS = 2.0
"""How long hung tasks get to finish after they are cancelled."""
BLOCKED_SECONDS = 1.0
"""A run past its deadline whose loop has not turned for this long is a blocked loop."""
CLOSE_SECONDS = 5.0
LOOP_THREAD_NAME = "concurrency-event-loop"
MIN_HOLD_RATE = 0.05
MAX_HOLD_RATE = 0.5
"""Bounds of the per-run chance that a ready task step is held back (drawn uniformly)."""
MAX_HOLD_PASSES = 2

T = TypeVar("T")
Handle = asyncio.Handle


# -- the order of ready callbacks ---------------------------------------------------------------


class ReadyOrder(Protocol):
    def arrange(self, ready: deque[Handle]) -> None:
        """Reorder ``ready`` in place before the loop runs this pass's callbacks."""

    def release(self) -> list[Handle]:
        """The steps held back, handed over when another order takes this one's place."""


class FifoOrder:
    """asyncio's own order: callbacks run in the order they became ready."""

    def arrange(self, ready: deque[Handle]) -> None:
        return None

    def release(self) -> list[Handle]:
        return []


FIFO = FifoOrder()


def is_task_step(handle: Handle) -> bool:
    """Whether a ready callback starts or resumes a task (and so may be moved)."""
    callback = getattr(handle, "_callback", None)
    return isinstance(getattr(callback, "__self__", None), asyncio.Task)


@dataclass
class SeededOrder:
    """Shuffle ready task steps and hold some back, every choice from one seeded generator."""

    seed: int
    shuffle: bool = True
    hold_rate: float = 0.0
    passes: int = 0
    held: list[tuple[Handle, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def arrange(self, ready: deque[Handle]) -> None:
        self.passes += 1
        if len(ready) < 2 and not self.held:
            return  # nothing to reorder, and a lone step is never held
        # popleft and extendleft, never clear(): call_soon_threadsafe may append meanwhile
        handles = [ready.popleft() for _ in range(len(ready))]
        fresh = len(handles)  # steps coming back from a hold are not held again
        if self.held:
            handles.extend(self._due())
        slots = [index for index, handle in enumerate(handles) if is_task_step(handle)]
        if slots and self.hold_rate:
            handles = self._hold_some(handles, [index for index in slots if index < fresh])
            slots = [index for index, handle in enumerate(handles) if is_task_step(handle)]
        if slots and self.shuffle:
            self._shuffle_steps(handles, slots)
        if not handles and self.held:  # never leave the loop idle while steps are held
            handles = [handle for handle, _ in self.held]
            self.held = []
        ready.extendleft(reversed(handles))

    def release(self) -> list[Handle]:
        released = [handle for handle, _ in self.held]
        self.held = []
        return released

    def _due(self) -> list[Handle]:
        due = [handle for handle, until in self.held if until <= self.passes]
        self.held = [(handle, until) for handle, until in self.held if until > self.passes]
        return due

    def _shuffle_steps(self, handles: list[Handle], slots: list[int]) -> None:
        """Permute the task steps among the places task steps occupy; the rest stay put."""
        steps = [handles[index] for index in slots]
        self.rng.shuffle(steps)
        for index, step in zip(slots, steps, strict=True):
            handles[index] = step

    def _hold_some(self, handles: list[Handle], slots: list[int]) -> list[Handle]:
        held = {index for index in slots if self.rng.random() < self.hold_rate}
        if held and len(held) == len(handles):  # keep one step running: the run moves on
            held.discard(slots[0])
        for index in sorted(held):
            self.held.append((handles[index], self.passes + self.rng.randint(1, MAX_HOLD_PASSES)))
        return [handle for index, handle in enumerate(handles) if index not in held]


def order_for_run(run_index: int, seed: int) -> ReadyOrder:
    """Run 0: FIFO; odd runs: seeded shuffles; even runs from 2: shuffles and holds."""
    if run_index == 0:
        return FIFO
    if run_index % 2 == 1:
        return SeededOrder(seed)
    rng = random.Random(derive_seed("hold", seed))
    return SeededOrder(seed, hold_rate=rng.uniform(MIN_HOLD_RATE, MAX_HOLD_RATE))


# -- the loop ---------------------------------------------------------------------------------


class ScheduledEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ready callbacks are arranged by :attr:`order` each pass;
    on the virtual clock (``virtual=True``), its time is a :class:`VirtualClock`'s and the
    timers of a run's tasks move as :attr:`timers` says (``runners/aio_clock.py``)."""

    def __init__(self, *, virtual: bool = False) -> None:
        super().__init__()
        self.order: ReadyOrder = FIFO
        self.timers: TimerMove = EXACT
        self.injection: CancelPlan | None = None
        self.trace: StepTrace | None = None
        self.watch: RunWatch | None = None
        self.last_pass = time.monotonic()
        self.clock = VirtualClock() if virtual else None
        inside = cast(Any, self)  # asyncio's own attributes, not in its stubs
        self._own_fds = len(inside._selector.get_map())
        self._threads_before = {thread.ident for thread in threading.enumerate()}
        if self.clock is not None:
            inside._selector = ClockedSelector(inside._selector, self.clock, self.real_waits)

    def use_order(self, order: ReadyOrder) -> None:
        """Arrange the ready callbacks with ``order`` from the next pass on. The steps the
        previous order holds back go to the ready queue: dropped, their tasks would never
        resume (a run cut short by a cancellation leaves some)."""
        self._ready.extend(self.order.release())  # type: ignore[attr-defined]
        self.order = order

    def use_timers(self, timers: TimerMove) -> None:
        """Move the timers that a run's tasks set from now on as ``timers`` says."""
        self.timers = timers if self.clock is not None else EXACT

    def use_injection(self, plan: CancelPlan | None) -> None:
        """Inject the cancellations and early timeouts of ``plan`` (None: none)."""
        self.injection = plan

    def use_trace(self, trace: StepTrace | None) -> None:
        """Keep the steps and timers of a run in ``trace`` (None: none)."""
        self.trace = trace

    def time(self) -> float:
        return self.clock.now if self.clock is not None else super().time()

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        if JITTERED.get():
            when, callback = self._moved(when, callback)
        return super().call_at(when, callback, *args, context=context)

    def _moved(
        self, when: float, callback: Callable[..., object]
    ) -> tuple[float, Callable[..., object]]:
        """A run's timer: a timeout may expire early (injection), any timer fire late."""
        now, due = self.time(), when
        fire = callback
        if self.injection is not None:
            when, fire = self.injection.move_timeout(when, now, callback)
        if fire is callback:
            when = self.timers.move(when, now)
        if self.trace is not None:
            fire = self.trace.timer(fire, due, self.time)
        return when, fire

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = super().create_task(coro, **kwargs)
        if self.trace is not None and JITTERED.get():  # made by a worker: traced too
            worker = CURRENT.get()
            if worker is not None:
                self.trace.child(task, worker.worker)
        return task

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        job = super().run_in_executor(executor, func, *args)
        if self.clock is not None:
            self.clock.track(job)
        return job

    def real_waits(self) -> bool:
        """Whether something real is awaited: a descriptor beside the wake-up pipe, a job."""
        registered = len(cast(Any, self)._selector.get_map())
        return (
            registered > self._own_fds
            or (self.clock is not None and self.clock.executor_jobs > 0)
            or threads_started_since(self._threads_before)
        )

    def _run_once(self) -> None:
        self.last_pass = time.monotonic()
        if self.order is not FIFO:
            self.order.arrange(self._ready)  # type: ignore[attr-defined]
        if self.injection is not None:
            self.injection.arrange(self._ready)  # type: ignore[attr-defined]
        if self.trace is not None:
            self.trace.arrange(self._ready)  # type: ignore[attr-defined]
        if self.clock is not None:
            self._advance(self.clock)
        super()._run_once()  # type: ignore[misc]

    def _advance(self, clock: VirtualClock) -> None:
        watch, now = self.watch, time.monotonic()
        if watch is not None and watch.overdue(now):  # past its deadline: at real time's pace
            clock.catch_up(watch.clock_started + (now - watch.started))
        inside = cast(Any, self)
        clock.before_pass(bool(inside._ready), self.real_waits(), inside._scheduled)


class LoopSchedule(Protocol):
    """What a run needs of its loop besides asyncio's API: where to put the order of ready task
    steps, the run being watched, and when the loop last turned (a :class:`ScheduledEventLoop`
    is its own schedule; an :class:`AdoptedLoop` is a borrowed loop's)."""

    watch: RunWatch | None
    last_pass: float

    def use_order(self, order: ReadyOrder) -> None: ...

    def use_timers(self, timers: TimerMove) -> None: ...

    def use_injection(self, plan: CancelPlan | None) -> None: ...

    def use_trace(self, trace: StepTrace | None) -> None: ...


_MISSING = object()


def can_order(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the ready callbacks of ``loop`` can be arranged before each pass: one of
    asyncio's own loops (selector, proactor: a deque turned by ``_run_once``). Others (uvloop)
    keep theirs in C: their tasks run in FIFO order."""
    return (
        isinstance(loop, asyncio.BaseEventLoop)
        and isinstance(getattr(loop, "_ready", None), deque)
        and callable(getattr(loop, "_run_once", None))
        and hasattr(loop, "__dict__")
    )


ADOPTED: dict[int, AdoptedLoop] = {}
"""The loops borrowed right now, by ``id``: how a run on one finds its schedule."""


class AdoptedLoop:
    """A loop the plugin did not make, borrowed while the plugin's thread runs it.

    When :func:`can_order` allows it, the loop's ``_run_once`` is replaced *on the instance* by
    one that lets :attr:`order` arrange the ready task steps first, exactly as
    :class:`ScheduledEventLoop` does: one seed, one schedule, the same one as on the plugin's
    own loop. :meth:`release` puts back what it found. Otherwise the steps keep asyncio's FIFO
    order and a timer marks each turn for the blocked-loop watch. Tasks that were on the loop
    before (a fixture's) are not the plugin's to cancel or to report as leftovers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.order: ReadyOrder = FIFO
        self.watch: RunWatch | None = None
        self.last_pass = time.monotonic()
        self.orders_tasks = can_order(loop)
        self.tasks_before = frozenset(asyncio.all_tasks(loop))
        self._found: object = _MISSING
        self._beat: asyncio.TimerHandle | None = None
        if self.orders_tasks:
            self._found = vars(loop).get("_run_once", _MISSING)
            self._turn: Callable[[], None] = loop._run_once  # type: ignore[attr-defined]
            loop._run_once = self._run_once  # type: ignore[attr-defined]
        ADOPTED[id(loop)] = self

    def _run_once(self) -> None:
        self.last_pass = time.monotonic()
        if self.order is not FIFO:
            self.order.arrange(self.loop._ready)  # type: ignore[attr-defined]
        self._turn()

    def use_order(self, order: ReadyOrder) -> None:
        """As :meth:`ScheduledEventLoop.use_order`; a loop that cannot be ordered keeps FIFO."""
        if not self.orders_tasks:
            return
        self.loop._ready.extend(self.order.release())  # type: ignore[attr-defined]
        self.order = order

    def use_timers(self, timers: TimerMove) -> None:
        """A borrowed loop keeps the real clock and its timers as they are."""

    def use_injection(self, plan: CancelPlan | None) -> None:
        """A borrowed loop gets no injection: its tasks run as pytest-asyncio runs them."""

    def use_trace(self, trace: StepTrace | None) -> None:
        """A borrowed loop keeps no trace of its steps."""

    def beat(self) -> None:
        """On a loop that cannot be ordered: mark the turns (called on the loop, re-arms)."""
        self.last_pass = time.monotonic()
        self._beat = self.loop.call_later(POLL_SECONDS, self.beat)

    def release(self) -> None:
        """Hand the loop back as it was found: FIFO, no held step, its own ``_run_once``."""
        self.use_order(FIFO)
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if self.orders_tasks:
            if self._found is _MISSING:
                vars(self.loop).pop("_run_once", None)
            else:
                self.loop._run_once = self._found  # type: ignore[attr-defined]
        if ADOPTED.get(id(self.loop)) is self:
            del ADOPTED[id(self.loop)]


def schedule_of(loop: asyncio.AbstractEventLoop) -> LoopSchedule | None:
    """The schedule of a loop a run may use: the plugin's own, or one borrowed right now."""
    if isinstance(loop, ScheduledEventLoop):
        return loop
    adopted = ADOPTED.get(id(loop))
    return adopted if adopted is not None and adopted.loop is loop else None


@dataclass
class RunWatch:
    """The run in progress, as the thread waiting for the loop sees it."""

    record: RunRecord
    tasks: dict[asyncio.Task[None], int]
    started: float
    timeout: float
    on_run_done: Callable[[RunRecord], bool]
    clock_started: float = 0.0  # loop.time() when the run started (the virtual clock's)
    _claimed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        """True exactly once: whoever claims the run reports it (the loop, or the watcher)."""
        with self._lock:
            claimed, self._claimed = self._claimed, True
            return not claimed

    def overdue(self, now: float) -> bool:
        return now > self.started + self.timeout


class LoopHost:
    """A :class:`ScheduledEventLoop` (on the virtual clock with ``virtual=True``) running in a
    daemon thread, and a way to run coroutines on it from another thread with every wait
    bounded. Given a ``loop`` (not running, not closed), it borrows that one instead
    (:class:`AdoptedLoop`, on its own clock) and hands it back at :meth:`close`, stopped and
    open, to its owner."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None = None, *, virtual: bool = False
    ) -> None:
        self.adopted = AdoptedLoop(loop) if loop is not None else None
        self.loop: asyncio.AbstractEventLoop = (
            loop if loop is not None else ScheduledEventLoop(virtual=virtual)
        )
        self.schedule: LoopSchedule = self.adopted or cast(ScheduledEventLoop, self.loop)
        if self.adopted is not None and not self.adopted.orders_tasks:
            self.loop.call_soon(self.adopted.beat)  # not running yet: its first callback
        self.abandoned = False
        self._died: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name=LOOP_THREAD_NAME, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.loop.run_forever()
        except BaseException as exc:  # KeyboardInterrupt or SystemExit escaped a task
            self._died = exc

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop, in a copy of the caller's context, and wait for it."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        context = contextvars.copy_context()
        self.loop.call_soon_threadsafe(self._start, coroutine, context, done)
        try:
            return self._wait(done)
        except BaseException as exc:
            if done.done():
                raise  # the coroutine's own outcome
            # raised into the wait (pytest-timeout's failure, Ctrl-C): the loop's tasks end here
            if not self.abandoned and self._died is None and self.loop.is_running():
                self._wait_bounded(self._cancel_all(), CANCEL_SECONDS)
            raise without_traceback(exc)  # noqa: B904 (the same exception)

    def _start(
        self,
        coroutine: Coroutine[Any, Any, T],
        context: contextvars.Context,
        done: concurrent.futures.Future[T],
    ) -> None:
        task = context.run(self.loop.create_task, coroutine)
        task.add_done_callback(lambda finished: _settle(finished, done))

    def _wait(self, done: concurrent.futures.Future[T]) -> T:
        while True:
            try:
                return done.result(POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                pass
            if self._died is not None:
                raise self._died
            watch = self.schedule.watch
            if watch is not None and self._blocked(watch):
                self._report_blocked(watch)
                workers = ", ".join(map(str, watch.record.hung_workers))
                raise LoopBlocked(
                    messages.LOOP_BLOCKED.format(seconds=watch.timeout, worker=workers), self.thread
                )

    def _blocked(self, watch: RunWatch) -> bool:
        now = time.monotonic()
        return watch.overdue(now) and now - self.schedule.last_pass > BLOCKED_SECONDS

    def _report_blocked(self, watch: RunWatch) -> None:
        """Record who blocks the loop, with the loop thread's stack; abandon the loop."""
        self.abandoned = True
        if not watch.claim():
            return
        record = watch.record
        try:
            current = asyncio.current_task(self.loop)
        except RuntimeError:
            current = None
        blocking = watch.tasks.get(current) if current is not None else None
        record.hung_workers = sorted(
            index for task, index in watch.tasks.items() if not task.done()
        )
        record.hung_after = watch.timeout
        for task, index in watch.tasks.items():
            if not task.done() and index != blocking:
                record.stacks[index] = task_stack(task)
        frame = sys._current_frames().get(self.thread.ident or -1)
        if blocking is not None and frame is not None:
            record.stacks[blocking] = (
                messages.LOOP_BLOCKED.format(seconds=watch.timeout, worker=blocking)
                + "\n"
                + user_stack(frame)
            )
        watch.on_run_done(record)

    async def _cancel_all(self) -> None:
        """Cancel every other task and let them unwind, so that none is left for the leak
        check to blame on the test (on a borrowed loop: those that came after it was lent)."""
        tasks = self._cancel_new_tasks()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_SECONDS)

    def _cancel_new_tasks(self) -> list[asyncio.Task[Any]]:
        current = asyncio.current_task(self.loop)
        kept = self.adopted.tasks_before if self.adopted is not None else frozenset()
        tasks = [t for t in asyncio.all_tasks(self.loop) if t is not current and t not in kept]
        for task in tasks:
            task.cancel()
        return tasks

    def close(self) -> None:
        """Cancel what is left, stop the loop and join its thread (unless it was abandoned).
        A borrowed loop is only stopped and handed back: what is left on it is its owner's
        (pytest-asyncio cancels it when it closes the loop, after the fixtures' teardown)."""
        if self.adopted is not None:
            self._give_back(self.adopted)
            return
        if self.abandoned or not self.thread.is_alive():
            if not self.thread.is_alive() and not self.loop.is_closed():
                self.loop.close()
            return
        try:
            self._wait_bounded(self._shutdown(), CLOSE_SECONDS)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(CLOSE_SECONDS)
            if not self.thread.is_alive():
                self.loop.close()
            else:
                self.abandoned = True

    def _give_back(self, adopted: AdoptedLoop) -> None:
        """Stop the borrowed loop and wait for its thread: its owner runs it next (the fixtures'
        teardown). A loop a synchronous call blocked gets a short while to come back."""
        try:
            if self.thread.is_alive():
                if self.abandoned:  # should it come back: the runs' tasks end first
                    self.loop.call_soon_threadsafe(self._cancel_new_tasks)
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(CANCEL_SECONDS if self.abandoned else CLOSE_SECONDS)
                self.abandoned = self.thread.is_alive()
        finally:
            adopted.release()

    def _wait_bounded(self, coroutine: Coroutine[Any, Any, None], seconds: float) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            future.result(seconds)
        except (concurrent.futures.TimeoutError, Exception):
            future.cancel()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        note_leftover_tasks([task for task in asyncio.all_tasks() if task is not current])
        await self._cancel_all()  # the leftovers: reported as the test's leak, then cancelled
        await self.loop.shutdown_asyncgens()


def _settle(task: asyncio.Task[T], done: concurrent.futures.Future[T]) -> None:
    if task.cancelled():
        done.set_exception(concurrent.futures.CancelledError())
    elif task.exception() is not None:
        done.set_exception(task.exception())
    else:
        done.set_result(task.result())
