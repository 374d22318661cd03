"""Unit tests of the perturbation engine, driven by hand-written thread loops (no plugin)."""

from __future__ import annotations

import contextlib
import dis
import json
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pytest_concurrency
from pytest_concurrency.engine.owncode import CodeFilter
from pytest_concurrency.engine.seeds import run_seed
from pytest_concurrency.races import codefilter, perturb
from pytest_concurrency.races.codefilter import shared_state_offsets
from pytest_concurrency.races.perturb import (
    NO_PERTURBATION,
    Action,
    CallDecisions,
    Decision,
    Perturbation,
    RunProfile,
    SeededPerturbation,
    WorkerSchedule,
    make_perturbation,
    seeded_perturbation,
    worker_seed,
)

HERE = Path(__file__).resolve().parent
WORKERS = 4
RUNS = 300
GIL_ENABLED = getattr(sys, "_is_gil_enabled", lambda: True)()
MONITORING = sys.version_info >= (3, 12)


class Counter:
    """The canonical lost update: no call between the read and the write of ``n``."""

    def __init__(self) -> None:
        self.n = 0

    def increment(self) -> None:
        self.n += 1


@contextlib.contextmanager
def short_switch_interval() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def run_series(
    perturbation: Perturbation,
    make_body: Callable[[], tuple[Callable[[], object], Callable[[], bool]]],
    *,
    runs: int = RUNS,
    workers: int = WORKERS,
    seed: int = 1,
) -> int:
    """Run ``runs`` runs of ``workers`` threads as the thread runner does; count failing runs.

    ``make_body`` gives, per run, the body every worker calls and a check made after the run.
    """
    failing = 0
    perturbation.series_started()
    try:
        with short_switch_interval():
            for run in range(runs):
                body, check = make_body()
                run_once(perturbation, body, run, run_seed(seed, run), workers)
                failing += not check()
    finally:
        perturbation.series_finished()
    return failing


def run_once(
    perturbation: Perturbation, body: Callable[[], object], run: int, seed: int, workers: int
) -> None:
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        barrier.wait()
        perturbation.call_started(worker, run, seed)
        try:
            body()
        except BaseException as exc:
            errors.append(exc)
        finally:
            perturbation.call_finished()

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def in_a_thread(function: Callable[[], object]) -> None:
    """Run ``function`` in a thread of its own: it may change that thread's trace function."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            function()
        except BaseException as exc:
            errors.append(exc)
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def in_a_series_thread(perturbation: Perturbation, function: Callable[[], object]) -> None:
    """:func:`in_a_thread` between the series' start and finish, as one worker of a run."""
    perturbation.series_started()
    try:
        in_a_thread(function)
    finally:
        perturbation.series_finished()


def lost_update() -> tuple[Callable[[], object], Callable[[], bool]]:
    counter = Counter()
    return counter.increment, lambda: counter.n == WORKERS


def engine(seed: int = 1, *, roots: tuple[Path, ...] = (HERE,)) -> SeededPerturbation:
    return seeded_perturbation(list(roots), seed, record=True)


# -- finding the race -----------------------------------------------------------------------


def test_the_window_has_no_call_in_it() -> None:
    opnames = [ins.opname for ins in dis.get_instructions(Counter.increment)]
    window = opnames[opnames.index("LOAD_ATTR") : opnames.index("STORE_ATTR")]
    assert not [name for name in window if name.startswith("CALL")]


def test_lost_update_is_found_with_perturbation() -> None:
    assert run_series(engine(), lost_update) > 0


@pytest.mark.skipif(not GIL_ENABLED, reason="without the GIL the window interleaves anyway")
def test_lost_update_is_not_found_without_perturbation() -> None:
    assert run_series(NO_PERTURBATION, lost_update) == 0


def test_code_outside_the_roots_is_not_perturbed(tmp_path: Path) -> None:
    perturbation = engine(roots=(tmp_path,))
    assert run_series(perturbation, lost_update, runs=20) == 0
    assert perturbation.stats.calls == 20 * WORKERS
    assert perturbation.stats.points == 0


def test_the_code_under_test_stops_at_shared_state_operations() -> None:
    perturbation = engine()
    run_series(perturbation, lost_update, runs=5)
    assert perturbation.stats.points >= 2 * 5 * WORKERS  # LOAD_ATTR and STORE_ATTR of n


# -- randomness, both ways ------------------------------------------------------------------


def draws(schedule: WorkerSchedule, count: int = 5000) -> list[Decision]:
    return [schedule.next_decision() for _ in range(count)]


def a_profile() -> RunProfile:
    return RunProfile(give_way_rate=0.3, sleep_share=0.5, longest_sleep=1e-4)


def test_same_seed_same_decisions() -> None:
    first = draws(WorkerSchedule(a_profile(), worker_seed(7, 11, 2)))
    again = draws(WorkerSchedule(a_profile(), worker_seed(7, 11, 2)))
    assert first == again
    assert {decision.action for decision in first} >= {Action.PASS, Action.YIELD, Action.SLEEP}


def test_a_deadline_passed_spends_the_calls_budget_at_the_next_clock_reading() -> None:
    """The audit's deadline (``stop_at``): once past it, a call's decision points end (the
    clock is read every ``DEADLINE_STRIDE + 1`` points); without one, they go on."""
    past = WorkerSchedule(a_profile(), worker_seed(7, 11, 2), stop_at=0.0)
    answers = [past.at_point() for _ in range(200)]
    assert False in answers
    assert answers.index(False) <= perturb.DEADLINE_STRIDE + 1
    future = WorkerSchedule(a_profile(), worker_seed(7, 11, 2), stop_at=float("inf"))
    assert all(future.at_point() for _ in range(200))


@pytest.mark.parametrize("other", [(8, 11, 2), (7, 12, 2), (7, 11, 3)])
def test_other_seed_run_or_worker_other_decisions(other: tuple[int, int, int]) -> None:
    first = draws(WorkerSchedule(a_profile(), worker_seed(7, 11, 2)))
    assert draws(WorkerSchedule(a_profile(), worker_seed(*other))) != first


def test_profiles_replay_by_seed_and_vary_across_runs() -> None:
    profiles = [RunProfile.from_seed(5, run_seed(5, run)) for run in range(200)]
    assert profiles == [RunProfile.from_seed(5, run_seed(5, run)) for run in range(200)]
    rates = {profile.give_way_rate for profile in profiles}
    assert len(rates) > 100
    assert 0.0 in rates  # some runs only open switch opportunities
    assert min(rate for rate in rates if rate) >= perturb.MIN_GIVE_WAY_RATE
    assert max(rates) <= perturb.MAX_GIVE_WAY_RATE
    sleep_shares = [profile.sleep_share for profile in profiles]
    assert min(sleep_shares) < 0.1 and max(sleep_shares) > 0.9


def recorded(seed: int) -> list[CallDecisions]:
    perturbation = engine(seed)
    run_series(perturbation, lost_update, runs=30, seed=seed)
    assert perturbation.decisions is not None
    return sorted(perturbation.decisions, key=lambda call: (call.run, call.worker))


def test_threads_replay_the_same_decisions_for_the_same_seed() -> None:
    first = recorded(seed=3)
    assert len(first) == 30 * WORKERS
    assert recorded(seed=3) == first


def test_threads_draw_other_decisions_for_another_seed() -> None:
    assert recorded(seed=4) != recorded(seed=3)


def test_the_budget_of_a_call_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perturb, "MAX_POINTS_PER_CALL", 10)
    schedule = WorkerSchedule(a_profile(), 1)
    decisions = draws(schedule, 20)
    assert decisions[9].action is not Action.STOP
    assert {decision.action for decision in decisions[10:]} == {Action.STOP}


def test_sleep_per_call_is_bounded() -> None:
    profile = RunProfile(
        give_way_rate=1.0, sleep_share=1.0, longest_sleep=perturb.MAX_SLEEP_SECONDS
    )
    schedule = WorkerSchedule(profile, 1)
    draws(schedule, 10_000)
    assert schedule.slept < perturb.MAX_SLEEP_PER_CALL + perturb.MAX_SLEEP_SECONDS


class LongLoop:
    def __init__(self) -> None:
        self.total = 0

    def spin(self) -> None:
        for _ in range(200):
            self.total = self.total + 1


def test_a_spent_budget_ends_tracing_and_the_call_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(perturb, "MAX_POINTS_PER_CALL", 50)
    perturbation = engine()
    loop = LongLoop()
    run_series(perturbation, lambda: (loop.spin, lambda: True), runs=3, workers=2)
    assert perturbation.stats.points == 3 * 2 * 50
    assert perturbation.decisions is not None
    assert all(call.decisions[-1].action is Action.STOP for call in perturbation.decisions)


# -- nothing is left changed ----------------------------------------------------------------


def hooks() -> dict[str, Any]:
    state: dict[str, Any] = {
        "trace": sys.gettrace(),
        "threading trace": threading.gettrace() if hasattr(threading, "gettrace") else None,
        "switch interval": sys.getswitchinterval(),
    }
    if MONITORING:
        state["tools"] = [sys.monitoring.get_tool(tool) for tool in range(6)]
    return state


def failing_body() -> tuple[Callable[[], object], Callable[[], bool]]:
    def body() -> None:
        Counter().increment()
        raise ValueError("boom")

    return body, lambda: True


def test_nothing_is_left_changed_after_a_series() -> None:
    before = hooks()
    perturbation = engine()
    run_series(perturbation, lost_update, runs=20)
    assert hooks() == before


def test_nothing_is_left_changed_after_a_failing_series() -> None:
    before = hooks()
    perturbation = engine()
    with pytest.raises(ValueError, match="boom"):
        run_series(perturbation, failing_body, runs=3)
    assert hooks() == before


@pytest.mark.skipif(not MONITORING, reason="sys.monitoring is 3.12+")
def test_the_monitoring_tool_is_freed() -> None:
    perturbation = engine()
    assert isinstance(perturbation, perturb.MonitoringPerturbation)
    perturbation.series_started()
    tool_id = perturbation.tool_id
    assert tool_id is not None
    assert sys.monitoring.get_tool(tool_id) == perturb.MONITORING_TOOL_NAME
    perturbation.series_finished()
    assert sys.monitoring.get_tool(tool_id) is None
    assert perturbation.tool_id is None


@pytest.mark.skipif(not MONITORING, reason="sys.monitoring is 3.12+")
def test_no_free_tool_id_turns_perturbation_off() -> None:
    claimed = [t for t in perturb.MONITORING_TOOL_IDS if sys.monitoring.get_tool(t) is None]
    for tool_id in claimed:
        sys.monitoring.use_tool_id(tool_id, "someone else")
    try:
        perturbation = engine()
        run_series(perturbation, lost_update, runs=3)
        assert perturbation.unavailable_reason is not None
        assert perturbation.stats.points == 0
    finally:
        for tool_id in claimed:
            sys.monitoring.free_tool_id(tool_id)


def test_the_workers_own_trace_function_is_put_back() -> None:
    perturbation = engine()
    seen: list[object] = []

    def own_tracer(frame: Any, event: str, arg: Any) -> None:
        return None

    def work() -> None:
        sys.settrace(own_tracer)
        perturbation.call_started(0, 0, 1)
        try:
            Counter().increment()
        finally:
            perturbation.call_finished()
        seen.append(sys.gettrace())
        sys.settrace(None)

    in_a_series_thread(perturbation, work)
    assert seen == [own_tracer]


def test_disabled_perturbation_changes_nothing() -> None:
    perturbation = make_perturbation(enabled=False, roots=[HERE], seed=1)
    assert perturbation is NO_PERTURBATION


def test_enabled_perturbation_uses_the_interpreters_mechanism() -> None:
    perturbation = make_perturbation(enabled=True, roots=[HERE], seed=1)
    expected = perturb.MonitoringPerturbation if MONITORING else perturb.TracePerturbation
    assert isinstance(perturbation, expected)


# -- the code filter ------------------------------------------------------------------------


def test_user_code_is_code_under_the_roots() -> None:
    code_filter = CodeFilter([HERE])
    assert code_filter.is_user_code(Counter.increment.__code__)
    assert not CodeFilter([HERE / "elsewhere"]).is_user_code(Counter.increment.__code__)


@pytest.mark.parametrize(
    "function",
    [json.dumps, pytest.fixture, pytest_concurrency.races.perturb.make_perturbation],
    ids=["stdlib", "pytest", "plugin"],
)
def test_tooling_is_never_user_code(function: Callable[..., object]) -> None:
    everything = CodeFilter([Path("/")])
    assert not everything.is_user_code(function.__code__)


@pytest.mark.parametrize(
    "filename",
    ["<string>", "<frozen importlib._bootstrap>", "/x/.venv/lib/python3.11/site-packages/m.py"],
)
def test_no_file_or_installed_file_is_not_user_code(filename: str) -> None:
    assert not CodeFilter([Path("/")]).is_user_file(filename)


def test_shared_state_offsets_are_the_load_and_store_of_the_attribute() -> None:
    names = {
        ins.opname
        for ins in dis.get_instructions(Counter.increment)
        if ins.offset in shared_state_offsets(Counter.increment.__code__)
    }
    assert names == {"LOAD_ATTR", "STORE_ATTR"}
    assert names <= codefilter.SHARED_STATE_OPNAMES


def test_acting_draws_the_same_choices_as_deciding() -> None:
    profile = RunProfile(give_way_rate=0.4, sleep_share=0.5, longest_sleep=1e-9)
    decided, acted = WorkerSchedule(profile, 9), WorkerSchedule(profile, 9)
    draws(decided, 2000)
    for _ in range(2000):
        acted.at_point()
    assert (acted.points, acted.yields, acted.sleeps, acted.slept) == (
        decided.points,
        decided.yields,
        decided.sleeps,
        decided.slept,
    )


class FrameRecorder:
    """A point hook that notes the user's function at each decision point."""

    def __init__(self) -> None:
        self.functions: list[str] = []

    def at_point(self) -> bool:
        self.functions.append(sys._getframe(2).f_code.co_name)
        return True


# -- the callbacks, called directly ---------------------------------------------------------
# Inside a trace or monitoring callback nothing is traced, so these are also the only way
# coverage sees the callbacks' code run. The user code is compiled under a root of its own, so
# that this file's code (the hooks, the checks) is not perturbed meanwhile.

USER_SOURCE = """
class Counter:
    def increment(self):
        self.n += 1
"""


@pytest.fixture
def user_root(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def increment(user_root: Path) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(USER_SOURCE, str(user_root / "user.py"), "exec"), namespace)
    return namespace["Counter"].increment.__code__


def shared(code: Any) -> list[int]:
    return sorted(shared_state_offsets(code))


def not_shared(code: Any) -> int:
    return next(offset for offset in range(0, 400, 2) if offset not in shared(code))


class Points:
    """A point hook that counts its points and asks to stop at the ``stop_at``-th."""

    def __init__(self, stop_at: int = 10**9) -> None:
        self.points = 0
        self.stop_at = stop_at

    def at_point(self) -> bool:
        self.points += 1
        return self.points < self.stop_at


def fake_frame(code: Any, lasti: int = 0) -> Any:
    return types.SimpleNamespace(
        f_code=code, f_lasti=lasti, f_trace_opcodes=False, f_trace_lines=True
    )


def test_a_call_into_user_code_turns_on_its_opcode_events_only(
    user_root: Path, increment: Any
) -> None:
    tracing = perturb.TracePerturbation([user_root], 1)
    user, tooling = fake_frame(increment), fake_frame(json.dumps.__code__)
    assert tracing._on_call(tooling, "call", None) is None
    assert tooling.f_trace_opcodes is False
    local = tracing._on_call(user, "call", None)
    assert callable(local)
    assert (user.f_trace_opcodes, user.f_trace_lines) == (True, False)
    assert tracing._on_call(fake_frame(increment), "call", None) is local  # one per code


def test_the_opcode_tracer_stops_at_shared_state_instructions_only(
    user_root: Path, increment: Any
) -> None:
    tracing = perturb.TracePerturbation([user_root], 1)
    hook = Points()
    tracing._thread.schedule = hook
    on_opcode = tracing._opcode_tracer(increment)
    for offset in [not_shared(increment), *shared(increment)]:
        assert on_opcode(fake_frame(increment, offset), "opcode", None) is on_opcode
    assert on_opcode(fake_frame(increment, shared(increment)[0]), "line", None) is on_opcode
    assert hook.points == len(shared(increment)) == 2


def test_a_spent_budget_turns_the_frames_opcodes_off_and_restores_the_tracer(
    user_root: Path, increment: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracing = perturb.TracePerturbation([user_root], 1)
    state = tracing._thread
    hook = Points(stop_at=1)
    before = sys.gettrace()
    state.schedule = hook
    monkeypatch.setattr(perturb.TRACE_LAYER, "beneath", before)  # as call_started leaves it
    on_opcode = tracing._opcode_tracer(increment)
    frame = fake_frame(increment, shared(increment)[0])
    frame.f_trace_opcodes = True
    on_opcode(frame, "opcode", None)
    assert (hook.points, frame.f_trace_opcodes, state.schedule) == (1, False, None)
    assert sys.gettrace() is before
    on_opcode(frame, "opcode", None)  # no schedule: nothing is called
    assert hook.points == 1


def test_the_tracer_beneath_gets_every_event_but_opcodes(user_root: Path, increment: Any) -> None:
    seen: list[tuple[str, str]] = []

    def theirs(frame: Any, event: str, arg: Any) -> Any:
        if isinstance(frame, types.SimpleNamespace):  # not the real frames traced meanwhile
            seen.append((frame.f_code.co_name, event))
        return theirs

    def check() -> None:
        tracing = perturb.TracePerturbation([user_root], 1)
        hook = Points()
        tracing._thread.schedule = hook
        on_call = tracing._chained(theirs)
        assert on_call(fake_frame(json.dumps.__code__), "call", None) is theirs
        user = fake_frame(increment, shared(increment)[0])
        local = on_call(user, "call", None)
        assert sys.gettrace() is on_call  # ours again, over the tracer beneath
        assert (user.f_trace_opcodes, user.f_trace_lines) == (True, True)
        assert local(user, "opcode", None) is local
        assert local(user, "line", None) is local
        assert hook.points == 1
        assert seen == [("dumps", "call"), ("increment", "call"), ("increment", "line")]

    in_a_thread(check)


def test_without_a_tracer_beneath_user_frames_get_no_line_events(
    user_root: Path, increment: Any
) -> None:
    def theirs(frame: Any, event: str, arg: Any) -> None:
        return None

    def check() -> None:
        on_call = perturb.TracePerturbation([user_root], 1)._chained(theirs)
        user = fake_frame(increment)
        on_call(user, "call", None)
        assert (user.f_trace_opcodes, user.f_trace_lines) == (True, False)

    in_a_thread(check)


def test_the_trace_layer_names_our_tracer_and_the_one_beneath(user_root: Path) -> None:
    def theirs(frame: Any, event: str, arg: Any) -> None:
        return None

    layers: list[tuple[bool, object]] = []

    def check() -> None:
        tracing = perturb.TracePerturbation([user_root], 1)
        sys.settrace(theirs)
        tracing.call_started(0, 0, 1)
        layer = perturb.TRACE_LAYER
        layers.append((layer.ours is sys.gettrace(), layer.beneath))
        tracing.call_finished()
        layers.append((layer.ours is None, layer.beneath))
        assert sys.gettrace() is theirs

    in_a_thread(check)
    assert layers == [(True, theirs), (True, None)]


@pytest.mark.skipif(not MONITORING, reason="sys.monitoring is 3.12+")
def test_monitoring_instruments_user_code_once_and_stops_at_its_shared_state(
    user_root: Path, increment: Any
) -> None:
    monitoring = perturb.MonitoringPerturbation([user_root], 1)
    hook = Points(stop_at=2)
    monitoring._thread.schedule = hook
    at, elsewhere, tooling = shared(increment)[0], not_shared(increment), json.dumps.__code__
    assert monitoring._on_start(increment, 0) is perturb._DISABLE  # no tool: nothing done
    assert monitoring._instrumented == {}
    monitoring.series_started()
    try:
        assert monitoring._on_start(tooling, 0) is perturb._DISABLE
        assert monitoring._on_start(increment, 0) is perturb._DISABLE
        assert list(monitoring._instrumented.values()) == [increment]
        assert monitoring._on_instruction(tooling, 0) is perturb._DISABLE
        assert monitoring._on_instruction(increment, elsewhere) is perturb._DISABLE
        assert monitoring._on_instruction(increment, at) is None
        assert monitoring._thread.schedule is hook
        assert monitoring._on_instruction(increment, at) is None  # the budget ends here
        assert monitoring._thread.schedule is None
        assert monitoring._on_instruction(increment, at) is None
        assert hook.points == 2
    finally:
        monitoring.series_finished()
    assert monitoring._instrumented == {}
