"""Seeded schedule perturbation: make the running worker give way inside the code under test.

On a GIL build CPython switches threads only at eval-breaker checks (calls, backward jumps), so
a read-modify-write such as ``self.n += 1`` never interleaves however short the switch
interval. A Python-level callback run *between two instructions* of the user's code changes
that: entering the callback is an eval-breaker check, so with the short switch interval the
thread runner sets, the worker can be switched out inside the window; and the callback can,
from a seeded random generator, make the worker give way on purpose (yield the CPU, or sleep
briefly) so that the other workers run through the window meanwhile.

The callbacks come from ``sys.settrace`` opcode events on 3.10 and 3.11 (installed per worker
thread, around each call) and from ``sys.monitoring`` on 3.12+ (one tool for the series,
instruction events enabled only for the user's code objects, gated per thread). They stop only
at shared-state instructions of the code under test (see
:mod:`pytest_concurrency.races.codefilter`).

How hard a run pushes varies from run to run: a :class:`RunProfile` drawn from the run's seed
gives the chance of giving way at each decision point, the share of give-ways that sleep rather
than yield, and the longest sleep; one run in eight (:data:`BARE_RUN_SHARE`) only opens switch
opportunities. Each worker draws its choices from its own generator seeded by (series seed,
run seed, worker), so a seed replays the same choices. The cost is bounded per call
(:data:`MAX_POINTS_PER_CALL`, :data:`MAX_SLEEP_PER_CALL`).

The thread runner drives a :class:`Perturbation` through one series of runs:

* ``series_started()`` / ``series_finished()`` are called in the controlling thread around the
  whole series; ``series_finished`` restores everything that was changed (trace and
  monitoring hooks), even after failures. The switch interval belongs to the runner.
* ``call_started(worker, run, run_seed)`` / ``call_finished()`` are called inside each worker
  thread around every call of the test body.
* ``loop_started()`` / ``loop_finished()`` bracket several series that follow one another (the
  one-run series of a ``concurrency.runs()`` loop): in between, ``series_finished`` keeps the
  machinery (the ``sys.monitoring`` tool, its events and callbacks, the instrumented code) and
  the next ``series_started`` reuses it; ``loop_finished`` releases it, once. Claiming a tool
  and setting its events stops the world on a free-threaded build, which made each harness run
  cost 15-20 times more there than with the GIL on (issue 16). Per run, only what the run's
  seed draws changes: the profile and the workers' generators, made in ``call_started``.

Pure module: no pytest import.
"""

from __future__ import annotations

import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import CodeType, FrameType
from typing import Any, NamedTuple, Protocol

from pytest_concurrency.engine import owncode
from pytest_concurrency.engine.seeds import derive_seed
from pytest_concurrency.races.codefilter import shared_state_offsets

BARE_RUN_SHARE = 0.125
"""Share of runs that only open switch opportunities and never force a give-way."""
MIN_GIVE_WAY_RATE = 1 / 64
MAX_GIVE_WAY_RATE = 1 / 2
"""Bounds of the per-run chance that a decision point gives way (drawn log-uniformly)."""
MIN_SLEEP_SECONDS = 2e-6
MAX_SLEEP_SECONDS = 2e-4
"""Bounds of the per-run longest sleep (drawn log-uniformly); each sleep is up to that long."""

MAX_POINTS_PER_CALL = 20_000
"""Decision points per call; past them the call runs on unperturbed (untraced on 3.10/3.11), so a
long body stays affordable (see benchmarks/README.md for the cost of one point)."""
MAX_SLEEP_PER_CALL = 0.005
"""Seconds of sleep decided per call; past it give-ways only yield."""
DEADLINE_STRIDE = 31
"""Under a deadline (``stop_at``: the audit's) the clock is read every 32 points; past it, stop."""

MONITORING_TOOL_NAME = "pytest-concurrency"
MONITORING_TOOL_IDS = (3, 4, 5, 2)
"""Tool ids tried in order: the unnamed ones first, then the profiler's."""
NO_FREE_TOOL_ID = (
    "schedule perturbation is off: every sys.monitoring tool id it could use ({}) is taken"
)

MECHANISM_SETTRACE = "sys.settrace opcode events"
MECHANISM_MONITORING = "sys.monitoring instruction events"

TraceFunction = Callable[[FrameType, str, Any], Any]


class Perturbation(Protocol):
    def series_started(self) -> None: ...

    def series_finished(self) -> None: ...

    def call_started(self, worker: int, run: int, run_seed: int) -> None: ...

    def call_finished(self) -> None: ...

    def loop_started(self) -> None: ...

    def loop_finished(self) -> None: ...


class NoPerturbation:
    """Changes nothing: the baseline, and the choice of ``perturb=False``."""

    def series_started(self) -> None:
        return None

    def series_finished(self) -> None:
        return None

    def call_started(self, worker: int, run: int, run_seed: int) -> None:
        return None

    def call_finished(self) -> None:
        return None

    def loop_started(self) -> None:
        return None

    def loop_finished(self) -> None:
        return None


NO_PERTURBATION = NoPerturbation()


# -- the seeded choices ---------------------------------------------------------------------


class Action(Enum):
    """What a worker does at one decision point."""

    PASS = "pass"  # a bare switch opportunity: the callback itself is an eval-breaker check
    YIELD = "yield"  # release the GIL and yield the CPU
    SLEEP = "sleep"  # release the GIL for a short, seeded time
    STOP = "stop"  # this call's budget is spent: no more decision points


class Decision(NamedTuple):
    action: Action
    seconds: float = 0.0


PASS_DECISION = Decision(Action.PASS)
YIELD_DECISION = Decision(Action.YIELD)
STOP_DECISION = Decision(Action.STOP)


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


@dataclass(frozen=True)
class RunProfile:
    """How hard one run perturbs: the same for every worker of the run."""

    give_way_rate: float
    sleep_share: float
    longest_sleep: float

    @classmethod
    def from_seed(cls, seed: int, run_seed: int) -> RunProfile:
        rng = random.Random(derive_seed("perturb-profile", seed, run_seed))
        bare = rng.random() < BARE_RUN_SHARE
        rate = 0.0 if bare else _log_uniform(rng, MIN_GIVE_WAY_RATE, MAX_GIVE_WAY_RATE)
        return cls(
            give_way_rate=rate,
            sleep_share=rng.random(),
            longest_sleep=_log_uniform(rng, MIN_SLEEP_SECONDS, MAX_SLEEP_SECONDS),
        )


def worker_seed(seed: int, run_seed: int, worker: int) -> int:
    return derive_seed("perturb-worker", seed, run_seed, worker)


_sched_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: time.sleep(0))
_now = time.monotonic


class WorkerSchedule:
    """The seeded give-way choices of one worker in one call, made at each decision point."""

    def __init__(
        self,
        profile: RunProfile,
        seed: int,
        log: list[Decision] | None = None,
        stop_at: float | None = None,
    ) -> None:
        self.profile = profile
        self._random = random.Random(seed).random
        self._rate = profile.give_way_rate
        self._max_points = MAX_POINTS_PER_CALL
        self._stop_at = stop_at  # monotonic seconds: past them, no more points (the audit)
        self.log = log
        self.points = 0
        self.yields = 0
        self.sleeps = 0
        self.slept = 0.0

    def next_decision(self) -> Decision:
        """Draw the choice for the next decision point, without acting on it."""
        self.points += 1
        if self.points > self._max_points:
            decision = STOP_DECISION
        elif self._random() >= self._rate:
            decision = PASS_DECISION
        else:
            decision = self._give_way_decision()
        if self.log is not None:
            self.log.append(decision)
        return decision

    def _give_way_decision(self) -> Decision:
        profile = self.profile
        if self._random() < profile.sleep_share and self.slept < MAX_SLEEP_PER_CALL:
            seconds = profile.longest_sleep * self._random()
            self.sleeps += 1
            self.slept += seconds
            return Decision(Action.SLEEP, seconds)
        self.yields += 1
        return YIELD_DECISION

    def at_point(self) -> bool:
        """Decide and act at one decision point; False once the call's budget is spent.

        Paid at every shared-state instruction, so the common case (no log, budget left, pass)
        is :meth:`next_decision` inlined: the same draws in the same order.
        """
        if self.log is None and self.points < self._max_points:
            self.points += 1
            stop_at = self._stop_at
            if stop_at is not None and not self.points & DEADLINE_STRIDE and _now() > stop_at:
                self._max_points = self.points  # past the deadline: the next point is the last
            if self._random() >= self._rate:
                return True
            decision = self._give_way_decision()
        else:
            decision = self.next_decision()
        return _act(decision)


def _act(decision: Decision) -> bool:
    action = decision.action
    if action is Action.SLEEP:
        time.sleep(decision.seconds)
    elif action is Action.YIELD:
        _sched_yield()
    return action is not Action.STOP


# -- what a series did ----------------------------------------------------------------------


@dataclass
class PerturbationStats:
    """Totals over a perturbation's calls: how much it stopped, yielded and slept."""

    calls: int = 0
    points: int = 0
    yields: int = 0
    sleeps: int = 0
    slept_seconds: float = 0.0

    def add(self, schedule: WorkerSchedule) -> None:
        self.calls += 1
        self.points += min(schedule.points, MAX_POINTS_PER_CALL)
        self.yields += schedule.yields
        self.sleeps += schedule.sleeps
        self.slept_seconds += schedule.slept


@dataclass(frozen=True)
class CallDecisions:
    """Every decision one worker drew in one call (kept only when recording)."""

    worker: int
    run: int
    run_seed: int
    decisions: tuple[Decision, ...]


class PointHook(Protocol):
    """What a tracing callback calls at each decision point of the code under test.

    ``at_point`` is called directly from the callback, so ``sys._getframe(2)`` inside it is the
    user's frame about to run the shared-state instruction. It returns False to stop: the rest
    of the call runs without decision points.
    """

    def at_point(self) -> bool: ...


class _ThreadState(threading.local):
    schedule: PointHook | None = None  # while the worker is in a call with budget left
    call: WorkerSchedule | None = None  # for the whole call: its totals
    worker: int = -1
    run: int = -1
    run_seed: int = 0


class _TraceLayer(threading.local):
    """This thread's perturbation tracer while :class:`TracePerturbation` has one installed,
    and the trace function it was installed over (a coverage tracer, say)."""

    ours: Any = None
    beneath: Any = None


TRACE_LAYER = _TraceLayer()
"""Where the tracer beneath ours is kept, to be put back when a call ends or its budget is
spent. The controlled primitives read it too: they run the plugin's own code with our tracer
taken off and the one beneath kept, so that coverage still measures it."""


class SeededPerturbation:
    """The common part of both mechanisms: one schedule per worker call, stats and log."""

    mechanism = "none"

    def __init__(self, roots: Sequence[Path], seed: int, *, record: bool = False) -> None:
        self.seed = seed
        self.code_filter = owncode.filter_for(tuple(str(root) for root in roots))
        self.stats = PerturbationStats()
        self.decisions: list[CallDecisions] | None = [] if record else None
        self.unavailable_reason: str | None = None
        self.fixed_profile: RunProfile | None = None  # benchmarks and tests: one for every run
        self.stop_at: float | None = None  # the audit's deadline: no decision points past it
        self._thread = _ThreadState()
        self._lock = threading.Lock()
        self._profiles: dict[int, RunProfile] = {}
        self.looping = False  # between loop_started and loop_finished: series keep the machinery

    # -- the Perturbation protocol --------------------------------------------------------

    def series_started(self) -> None:
        return None

    def series_finished(self) -> None:
        return None

    def loop_started(self) -> None:
        self.looping = True

    def loop_finished(self) -> None:
        """The loop is over: release what its series kept (nothing if none ran)."""
        if not self.looping:
            return
        self.looping = False
        self.series_finished()

    def call_started(self, worker: int, run: int, run_seed: int) -> None:
        state = self._thread
        state.worker, state.run, state.run_seed = worker, run, run_seed
        log: list[Decision] | None = [] if self.decisions is not None else None
        state.schedule = state.call = WorkerSchedule(
            self._profile(run_seed), worker_seed(self.seed, run_seed, worker), log, self.stop_at
        )
        self._activate()

    def call_finished(self) -> None:
        state = self._thread
        schedule, state.call, state.schedule = state.call, None, None
        self._deactivate()
        if schedule is None:
            return
        with self._lock:
            self.stats.add(schedule)
            if self.decisions is not None and schedule.log is not None:
                self.decisions.append(
                    CallDecisions(state.worker, state.run, state.run_seed, tuple(schedule.log))
                )

    def watch_points(self, watch: Callable[[PointHook], PointHook]) -> None:
        """Let ``watch`` see every decision point of this worker's call before the schedule
        does (the data-race watch, :mod:`pytest_concurrency.races.datarace`); called in the
        worker, right after ``call_started``."""
        state = self._thread
        if state.schedule is not None:
            state.schedule = watch(state.schedule)

    # -- for the mechanisms ---------------------------------------------------------------

    def _profile(self, run_seed: int) -> RunProfile:
        if self.fixed_profile is not None:
            return self.fixed_profile
        profile = self._profiles.get(run_seed)
        if profile is None:
            profile = RunProfile.from_seed(self.seed, run_seed)
            with self._lock:
                if len(self._profiles) > 1024:
                    self._profiles.clear()
                self._profiles[run_seed] = profile
        return profile

    def _activate(self) -> None:
        return None

    def _deactivate(self) -> None:
        return None


class TracePerturbation(SeededPerturbation):
    """3.10/3.11: ``sys.settrace`` with opcode events, installed in each worker around its call.

    Nothing global changes: the worker's previous trace function (a coverage tracer, say) is
    saved in ``call_started`` and put back in ``call_finished``; in between it still sees every
    event but opcodes (see :meth:`_chained`), so that coverage counts the body's lines.
    """

    mechanism = MECHANISM_SETTRACE

    def __init__(self, roots: Sequence[Path], seed: int, *, record: bool = False) -> None:
        super().__init__(roots, seed, record=record)
        self._tracers: dict[int, tuple[CodeType, TraceFunction]] = {}  # kept across series

    def _activate(self) -> None:
        previous = sys.gettrace()
        ours = self._on_call if previous is None else self._chained(previous)
        TRACE_LAYER.ours, TRACE_LAYER.beneath = ours, previous
        sys.settrace(ours)

    def _chained(self, previous: Any) -> TraceFunction:
        """A global trace function for both tracers: the previous one gets every event of
        every frame, ours the opcode events of user code (through the same local function,
        so that a scheduling point still sees the user's frame two frames up)."""

        def on_call_chained(frame: FrameType, event: str, arg: Any) -> TraceFunction | None:
            theirs = previous(frame, event, arg)
            if sys.gettrace() is not on_call_chained:  # coverage's C tracer takes over on calls
                sys.settrace(on_call_chained)
            code = frame.f_code
            if not self.code_filter.is_user_file(code.co_filename):
                return theirs  # type: ignore[no-any-return]
            frame.f_trace_opcodes = True
            if theirs is None:
                frame.f_trace_lines = False
            return self._opcode_tracer(code, theirs)

        return on_call_chained

    def _deactivate(self) -> None:
        sys.settrace(TRACE_LAYER.beneath)
        TRACE_LAYER.ours = TRACE_LAYER.beneath = None

    def _on_call(self, frame: FrameType, event: str, arg: Any) -> TraceFunction | None:
        code = frame.f_code
        if not self.code_filter.is_user_file(code.co_filename):
            return None
        entry = self._tracers.get(id(code))
        if entry is None:
            entry = self._tracers[id(code)] = (code, self._opcode_tracer(code))
        frame.f_trace_lines = False
        frame.f_trace_opcodes = True
        return entry[1]

    def _opcode_tracer(self, code: CodeType, theirs: TraceFunction | None = None) -> TraceFunction:
        """The local trace function of a user frame; ``theirs``: another tracer's local trace
        function for this frame, which gets every event but opcodes."""
        offsets = shared_state_offsets(code)  # found once per session
        state = self._thread

        def on_opcode(frame: FrameType, event: str, arg: Any) -> TraceFunction:
            nonlocal theirs
            if event != "opcode":
                if theirs is not None:
                    theirs = theirs(frame, event, arg)
                return on_opcode
            if frame.f_lasti in offsets:
                schedule = state.schedule
                if schedule is None or not schedule.at_point():
                    frame.f_trace_opcodes = False
                    if schedule is not None:  # budget spent: the rest of the call is untraced
                        state.schedule = None
                        sys.settrace(TRACE_LAYER.beneath)
            return on_opcode

        return on_opcode


class MonitoringPerturbation(SeededPerturbation):
    """3.12+: one ``sys.monitoring`` tool for the series, instruction events on user code only.

    ``PY_START``/``PY_RESUME`` are watched globally; the first start of a user code object turns
    on its ``INSTRUCTION`` events, every other location answers ``DISABLE`` at once, and so does
    every instruction that is not a shared-state operation. Callbacks fire in every thread; only
    a worker inside a call (the thread-local schedule) acts on them.
    """

    mechanism = MECHANISM_MONITORING

    def __init__(self, roots: Sequence[Path], seed: int, *, record: bool = False) -> None:
        super().__init__(roots, seed, record=record)
        self.tool_id: int | None = None
        self._offsets: dict[int, tuple[CodeType, frozenset[int]]] = {}  # kept across series
        self._instrumented: dict[int, CodeType] = {}  # until the tool is freed

    def series_started(self) -> None:
        if self.tool_id is not None:
            return
        monitoring = sys.monitoring  # type: ignore[attr-defined,unused-ignore]
        events = monitoring.events
        tool_id = _claim_tool_id()
        if tool_id is None:
            self.unavailable_reason = NO_FREE_TOOL_ID.format(MONITORING_TOOL_IDS)
            return
        self.tool_id = tool_id
        self.unavailable_reason = None
        try:
            monitoring.register_callback(tool_id, events.PY_START, self._on_start)
            monitoring.register_callback(tool_id, events.PY_RESUME, self._on_start)
            monitoring.register_callback(tool_id, events.INSTRUCTION, self._on_instruction)
            monitoring.set_events(tool_id, events.PY_START | events.PY_RESUME)
        except BaseException:
            self._free_tool()
            raise

    def series_finished(self) -> None:
        if not self.looping:  # in a loop the next series reuses the tool; loop_finished frees it
            self._free_tool()

    def _free_tool(self) -> None:
        tool_id, self.tool_id = self.tool_id, None
        if tool_id is None:
            return
        monitoring = sys.monitoring  # type: ignore[attr-defined,unused-ignore]
        events = monitoring.events
        try:
            monitoring.set_events(tool_id, events.NO_EVENTS)
            for code in self._instrumented.values():
                monitoring.set_local_events(tool_id, code, events.NO_EVENTS)
            for event in (events.PY_START, events.PY_RESUME, events.INSTRUCTION):
                monitoring.register_callback(tool_id, event, None)
        finally:
            monitoring.free_tool_id(tool_id)
            monitoring.restart_events()
            self._instrumented.clear()

    def _on_start(self, code: CodeType, offset: int) -> object:
        tool_id = self.tool_id
        key = id(code)
        if (
            tool_id is not None
            and key not in self._instrumented
            and self.code_filter.is_user_code(code)
        ):
            if key not in self._offsets:
                self._offsets[key] = (code, shared_state_offsets(code))  # the code keeps its id
            sys.monitoring.set_local_events(  # type: ignore[attr-defined,unused-ignore]
                tool_id, code, _INSTRUCTION
            )
            # Marked only once its events are on: without the GIL another worker may start the
            # same code meanwhile, and it must not run it uninstrumented (it sets them too).
            self._instrumented[key] = code
        return _DISABLE

    def _on_instruction(self, code: CodeType, offset: int) -> object:
        entry = self._offsets.get(id(code))
        if entry is None or offset not in entry[1]:
            return _DISABLE
        state = self._thread
        schedule = state.schedule
        if schedule is not None and not schedule.at_point():
            state.schedule = None  # budget spent: the rest of the call only pays the callback
        return None


_DISABLE: object = getattr(getattr(sys, "monitoring", None), "DISABLE", None)
_INSTRUCTION: int = getattr(
    getattr(getattr(sys, "monitoring", None), "events", None), "INSTRUCTION", 0
)


def _claim_tool_id() -> int | None:
    monitoring = sys.monitoring  # type: ignore[attr-defined,unused-ignore]
    for tool_id in MONITORING_TOOL_IDS:
        if monitoring.get_tool(tool_id) is None:
            monitoring.use_tool_id(tool_id, MONITORING_TOOL_NAME)
            return tool_id
    return None


def seeded_perturbation(
    roots: Sequence[Path], seed: int, *, record: bool = False
) -> SeededPerturbation:
    """The mechanism this interpreter supports best."""
    if sys.version_info >= (3, 12):
        return MonitoringPerturbation(roots, seed, record=record)
    return TracePerturbation(roots, seed, record=record)


def make_perturbation(*, enabled: bool, roots: Sequence[Path], seed: int) -> Perturbation:
    """What the thread runner uses: seeded perturbation of ``roots``' code, or none at all."""
    if not enabled:
        return NO_PERTURBATION
    return seeded_perturbation(roots, seed)
