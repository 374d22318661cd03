"""The controlled scheduler, deadlocks and lock-order inversions (issue 5).

Acceptance tests run pytest (pytester); those that involve hangs, deadlocks or leftover threads
run it in a subprocess. Unit tests cover the pure parts: PCT's priorities, change points and
bound, the lock-order graph, and the scheduler driven by hand-written thread loops.
"""

from __future__ import annotations

import importlib
import json
import math
import random
import re
import shlex
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine import settings
from pytest_concurrency.engine.outcomes import CallFailure, RunRecord
from pytest_concurrency.engine.seeds import run_seed
from pytest_concurrency.errors import DeadlockError
from pytest_concurrency.races import (
    originals,
    primitives,
    runreport,
    runstate,
    scheduler,
    strategies,
    tracked,
)
from pytest_concurrency.races.lockgraph import LockOrderGraph, OrderEdge, wait_cycle
from pytest_concurrency.races.primitives import tracked_primitives
from pytest_concurrency.races.scheduler import ControlledScheduler, make_scheduler
from pytest_concurrency.races.strategies import (
    PCTStrategy,
    RandomStrategy,
    pct_miss_bound,
    pct_run_probability,
    runs_for_confidence,
)

HERE = Path(__file__).resolve().parent
INTERLEAVING = re.compile(r"interleaving ([0-9a-f]{16})")
REPRODUCE = re.compile(r"reproduce: (pytest .*)$", re.MULTILINE)
FAILED_RUN = re.compile(r"RACE DETECTED in run (\d+) of")


# -- PCT: priorities, change points and the bound ------------------------------------------------


def pct_after(runs: int, *, decisions: int, seed: int = 1, depth: int = 3) -> PCTStrategy:
    strategy = PCTStrategy(depth)
    for run in range(runs):
        strategy.begin_run(4, seed + run)
        strategy.end_run(decisions)
    return strategy


def test_pct_priorities_are_a_seeded_permutation() -> None:
    strategy = PCTStrategy(3)
    strategy.begin_run(5, seed=7)
    priorities = strategy.priorities()
    assert sorted(priorities) == list(range(5))
    assert len(set(priorities.values())) == 5
    again = PCTStrategy(3)
    again.begin_run(5, seed=7)
    assert again.priorities() == priorities
    orders = set()
    for seed in range(50):
        strategy.begin_run(5, seed)
        orders.add(tuple(sorted(strategy.priorities(), key=strategy.priorities().__getitem__)))
    assert len(orders) > 20  # unseeded-like: other seeds, other orders


def test_the_first_pct_run_measures_k_and_has_no_change_points() -> None:
    strategy = PCTStrategy(3)
    strategy.begin_run(4, seed=1)
    assert strategy.change_points == frozenset()
    coverage = strategy.end_run(40)
    assert not coverage.covered
    assert strategy.max_decisions == 40


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_pct_change_points_are_d_minus_1_distinct_decisions_within_k(depth: int) -> None:
    strategy = pct_after(1, decisions=30, depth=depth)
    for seed in range(200):
        strategy.begin_run(4, seed)
        points = strategy.change_points
        assert len(points) == depth - 1
        assert all(1 <= point <= 30 for point in points)


def test_pct_change_points_are_uniform_over_1_to_k() -> None:
    strategy = pct_after(1, decisions=10, depth=2)
    counts = [0] * 11
    for seed in range(5000):
        strategy.begin_run(4, seed)
        (point,) = strategy.change_points
        counts[point] += 1
    assert counts[0] == 0
    assert min(counts[1:]) > 400 and max(counts[1:]) < 600


def test_pct_runs_the_highest_priority_worker_and_lowers_it_at_a_change_point() -> None:
    strategy = pct_after(1, decisions=5, depth=2)
    strategy.begin_run(3, seed=11)
    (change,) = strategy.change_points
    chosen = []
    for _ in range(5):
        top = max(range(3), key=strategy.priorities().__getitem__)
        chosen.append(strategy.pick([0, 1, 2], running=top))
    first = chosen[0]
    assert chosen[: change - 1] == [first] * (change - 1)
    assert chosen[change - 1] != first  # lowered below every other worker at the change point
    assert strategy.priorities()[first] < min(
        p for w, p in strategy.priorities().items() if w != first
    )


def test_pct_counts_a_run_only_if_its_decisions_fit_k() -> None:
    strategy = pct_after(1, decisions=20)
    strategy.begin_run(4, seed=3)
    assert strategy.end_run(20).covered
    strategy.begin_run(4, seed=4)
    assert not strategy.end_run(21).covered  # longer than the k it drew from
    assert strategy.max_decisions == 21


def test_a_worker_that_gives_way_drops_below_the_others() -> None:
    strategy = pct_after(1, decisions=50)
    strategy.begin_run(3, seed=5)
    top = max(range(3), key=strategy.priorities().__getitem__)
    strategy.gave_way(top)
    assert strategy.pick([0, 1, 2], running=top) != top


def test_past_the_horizon_pct_picks_at_random_so_spinning_cannot_starve() -> None:
    strategy = pct_after(1, decisions=10)
    strategy.begin_run(2, seed=1)
    picks = {strategy.pick([0, 1], running=0) for _ in range(strategies.MIN_HORIZON + 200)}
    assert picks == {0, 1}


def test_random_strategy_replays_by_seed_and_differs_across_seeds() -> None:
    def picks(seed: int) -> list[int]:
        strategy = RandomStrategy()
        strategy.begin_run(4, seed)
        return [strategy.pick([0, 1, 2, 3], running=None) for _ in range(200)]

    assert picks(3) == picks(3)
    assert picks(3) != picks(4)


def test_the_pct_bound() -> None:
    assert pct_run_probability(4, 10, 1) == pytest.approx(1 / 4)
    assert pct_run_probability(4, 10, 3) == pytest.approx(1 / 400)
    assert pct_miss_bound(4, 10, 3, 0) == 1.0
    assert pct_miss_bound(4, 10, 3, 100) == pytest.approx((1 - 1 / 400) ** 100)
    assert pct_miss_bound(1, 1, 1, 1) == 0.0  # one worker, one step: always found
    needed = runs_for_confidence(4, 10, 3)
    assert pct_miss_bound(4, 10, 3, needed) <= 0.05 < pct_miss_bound(4, 10, 3, needed - 1)
    assert needed == math.ceil(math.log(0.05) / math.log(1 - 1 / 400))


def test_the_bound_counts_only_covered_clean_runs_without_detached_steps() -> None:
    sched = make_scheduler("pct", roots=[HERE], seed=1, workers=2)
    covered = strategies.RunCoverage(True, 12)
    sched.runs = [
        runstate.RunSummary(2, 20, 9, 0, strategies.NOT_COVERED, True),  # the measuring run
        runstate.RunSummary(2, 20, 10, 0, covered, True),
        runstate.RunSummary(2, 20, 12, 0, covered, True),
        runstate.RunSummary(2, 20, 12, 0, covered, False),  # failed
        runstate.RunSummary(2, 20, 12, 1, covered, True),  # a step left the scheduler
    ]
    guarantee = sched.guarantee()
    assert guarantee is not None
    assert (guarantee.workers, guarantee.steps, guarantee.depth) == (2, 12, 3)
    assert (guarantee.clean_runs, guarantee.runs) == (2, 5)
    assert guarantee.miss_bound == pytest.approx((1 - 1 / (2 * 12**2)) ** 2)
    assert make_scheduler("random", roots=[HERE], seed=1, workers=2).guarantee() is None


# -- the lock-order graph --------------------------------------------------------------------


def edge(
    first: int,
    second: int,
    who: str = "worker 0",
    guards: frozenset[int] = frozenset(),
    line: int = 10,
) -> OrderEdge:
    return OrderEdge(first, second, who, ("a.py", line), ("a.py", line + 1), guards)


def test_an_inversion_is_a_cycle_reported_with_both_sites() -> None:
    graph = LockOrderGraph()
    graph.name(1, "Lock#1 (a.py:1)")
    graph.name(2, "Lock#2 (a.py:2)")
    graph.add(edge(1, 2, "worker 0", line=10))
    graph.add(edge(2, 1, "worker 1", line=20))
    ((cycle, count),) = graph.inversions()
    assert count == 1
    text = "\n".join(graph.describe(cycle))
    assert "LOCK-ORDER INVERSION" in text
    assert "worker 0 took Lock#2 (a.py:2) at a.py:11 while holding Lock#1 (a.py:1)" in text
    assert "(taken at a.py:10)" in text and "(taken at a.py:20)" in text
    assert "worker 1 took Lock#1 (a.py:1) at a.py:21" in text


def test_one_order_everywhere_is_no_inversion_and_a_gate_lock_guards_one() -> None:
    graph = LockOrderGraph()
    graph.add(edge(1, 2))
    graph.add(edge(2, 3))
    graph.add(edge(1, 3))
    assert graph.inversions() == []
    graph.add(edge(3, 1, guards=frozenset({9})))
    graph.add(edge(1, 2, guards=frozenset({9})))  # already known: the first one stays
    assert len(graph.inversions()) == 1
    guarded = LockOrderGraph()
    guarded.add(edge(1, 2, guards=frozenset({9})))
    guarded.add(edge(2, 1, guards=frozenset({9, 8})))
    assert guarded.inversions() == []  # both paths run under lock 9: they cannot overlap


def test_three_locks_in_a_ring_and_new_locks_per_run_fold_into_one_report() -> None:
    graph = LockOrderGraph()
    for base in (0, 10):  # the same three lines make new locks in a second run
        for lock in (1, 2, 3):
            graph.name(base + lock, f"Lock#{base + lock}", f"Lock (a.py:{lock})")
        graph.add(edge(base + 1, base + 2, line=1))
        graph.add(edge(base + 2, base + 3, line=2))
        graph.add(edge(base + 3, base + 1, line=3))
    ((cycle, count),) = graph.inversions()
    assert len(cycle) == 3 and count == 2


def test_wait_for_cycles() -> None:
    assert wait_cycle("a", {"a": 1, "b": 2}, {1: "b", 2: "a"}) == [("a", 1), ("b", 2)]
    assert wait_cycle("a", {"a": 1}, {1: "a"}) == [("a", 1)]  # waits for a lock it holds
    assert wait_cycle("a", {"a": 1, "b": 2}, {1: "b"}) is None  # b waits for a free lock
    assert wait_cycle("a", {"a": 1, "b": 2, "c": 2}, {1: "b", 2: "c"}) is None  # c's loop


# -- tracked primitives in a window, plain threads --------------------------------------------


def test_tracked_primitives_behave_like_the_real_ones_and_are_put_back() -> None:
    originals = (threading.Lock, threading.RLock, threading.Condition, time.sleep)
    with tracked_primitives():
        lock, rlock = threading.Lock(), threading.RLock()
        assert isinstance(lock, tracked.TrackedLock)
        assert lock.acquire() and not lock.acquire(False) and lock.locked()
        lock.release()
        with pytest.raises(RuntimeError):
            lock.release()
        with rlock, rlock:
            assert rlock._is_owned()
        with pytest.raises(RuntimeError):
            rlock.release()
        cond = threading.Condition()
        items: list[int] = []

        def produce() -> None:
            with cond:
                items.append(1)
                cond.notify()

        with cond:
            threading.Thread(target=produce).start()
            assert cond.wait_for(lambda: items, timeout=5)
        event, barrier = threading.Event(), threading.Barrier(1)
        assert not event.wait(0.01)
        barrier.wait()
    assert (threading.Lock, threading.RLock, threading.Condition, time.sleep) == originals
    assert primitives.originals_in_place()


def test_a_failure_inside_the_window_still_restores_everything() -> None:
    with pytest.raises(ZeroDivisionError), tracked_primitives():
        assert not primitives.originals_in_place()
        1 / 0  # noqa: B018
    assert primitives.originals_in_place()


LAZY_MODULE = """
import threading
from threading import Condition, Lock, RLock
from time import sleep as nap

LOCK_FACTORY = threading.Lock
NOT_A_PRIMITIVE = 42
"""


def test_a_module_first_imported_inside_the_window_gets_the_originals_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "lazy_locks_for_the_window"
    (tmp_path / f"{name}.py").write_text(LAZY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert name not in sys.modules
    try:
        with tracked_primitives():
            lazy = importlib.import_module(name)
            assert lazy.Lock is tracked.TrackedLock  # bound while the window was open
            assert lazy.nap is tracked.tracked_sleep
        assert lazy.Lock is threading.Lock is originals.ORIGINAL_LOCK
        assert lazy.LOCK_FACTORY is originals.ORIGINAL_LOCK
        assert lazy.RLock is threading.RLock is originals.ORIGINAL_RLOCK
        assert lazy.Condition is threading.Condition is originals.ORIGINAL_CONDITION
        assert lazy.nap is time.sleep is originals.ORIGINAL_SLEEP
        assert lazy.NOT_A_PRIMITIVE == 42
    finally:
        sys.modules.pop(name, None)


def test_an_attribute_that_refuses_to_be_put_back_raises_once_the_rest_is_back() -> None:
    class Fickle:
        refuse = False

        def __setattr__(self, name: str, value: object) -> None:
            if Fickle.refuse:
                raise AttributeError(f"{name} is read-only now")
            object.__setattr__(self, name, value)

    fickle, plain = Fickle(), types.SimpleNamespace()
    patch = primitives._Patch()
    patch.set(plain, "lock", "original", "replacement")
    patch.set(fickle, "lock", "original", "replacement")  # put back first: the last set
    Fickle.refuse = True
    with pytest.raises(AttributeError, match="read-only"):
        patch.restore()
    assert plain.lock == "original"
    assert not patch.replaced


def test_the_watchdog_breaks_a_real_deadlock_with_one_error_naming_the_cycle() -> None:
    errors: list[DeadlockError] = []
    with tracked_primitives():
        first, second = threading.Lock(), threading.Lock()
        both_hold = threading.Barrier(2)

        def take(a: threading.Lock, b: threading.Lock) -> None:
            with a:
                both_hold.wait()
                try:
                    with b:
                        pass
                except DeadlockError as error:
                    errors.append(error)

        threads = [  # daemons: were the watchdog broken, they would stay deadlocked
            threading.Thread(target=take, args=pair, name=f"taker-{i}", daemon=True)
            for i, pair in enumerate([(first, second), (second, first)])
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    (error,) = errors  # one thread breaks the cycle; the other then goes on
    text = str(error)
    assert text.startswith("DEADLOCK")
    assert "taker-0 waits for Lock#2" in text and "taker-1 waits for Lock#1" in text
    assert "held by taker-1" in text and "held by taker-0" in text


# -- the scheduler, driven by hand-written thread loops ---------------------------------------


Body = Callable[[int], object]


def drive(
    sched: ControlledScheduler,
    make_body: Callable[[], tuple[Body, Callable[[], bool]]],
    *,
    runs: int,
    seed: int = 1,
) -> list[RunRecord]:
    """Run ``runs`` runs as the thread runner does; the records of the failing ones."""
    failing = []
    workers = sched.workers
    sched.series_started()
    try:
        for run in range(runs):
            body, check = make_body()
            record = RunRecord(index=run, seed=run_seed(seed, run), workers=workers)
            drive_run(sched, body, record)
            if not check() and not record.failures:
                record.failures.append(
                    CallFailure.from_exception(AssertionError("check"), worker=0, run=run)
                )
            record.notes.extend(sched.describe_run(record))
            if record.failures:
                failing.append(record)
    finally:
        sched.series_finished()
    return failing


def drive_run(sched: ControlledScheduler, body: Body, record: RunRecord) -> None:
    barrier = threading.Barrier(record.workers)

    def work(worker: int) -> None:
        barrier.wait()
        sched.call_started(worker, record.index, record.seed)
        try:
            body(worker)
        except BaseException as exc:
            record.failures.append(CallFailure.from_exception(exc, worker=worker, run=record.index))
        finally:
            sched.call_finished()

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(record.workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads), "the scheduler hung"


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def increment(self) -> None:
        self.n += 1


def lost_update(workers: int = 2) -> tuple[Body, Callable[[], bool]]:
    counter = Counter()
    return (lambda worker: counter.increment()), (lambda: counter.n == workers)


@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_the_lost_update_is_found_in_a_few_runs(strategy: str) -> None:
    sched = make_scheduler(strategy, roots=[HERE], seed=3, workers=2)
    failing = drive(sched, lost_update, runs=100)
    assert failing, "a lost update with no call in its window was never interleaved"
    notes = "\n".join(failing[0].notes)
    assert "interleaving" in notes and "test_scheduler.py" in notes
    assert "self.n += 1" in notes


def interleavings(strategy: str, seed: int) -> list[tuple[int, int, int]]:
    sched = make_scheduler(strategy, roots=[HERE], seed=seed, workers=3)

    def three_increments() -> tuple[Body, Callable[[], bool]]:
        counter = Counter()
        return (lambda worker: [counter.increment() for _ in range(3)]), (lambda: True)

    fingerprints: list[tuple[int, int, int]] = []
    sched.series_started()
    try:
        for run in range(20):
            body, _ = three_increments()
            drive_run(sched, body, RunRecord(index=run, seed=run_seed(seed, run), workers=3))
            last = sched._last
            assert last is not None
            fingerprints.append((last.points, int(last.interleaving, 16), last.detaches))
    finally:
        sched.series_finished()
    return fingerprints


@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_a_seed_replays_the_same_interleavings_and_another_seed_differs(strategy: str) -> None:
    first = interleavings(strategy, seed=8)
    again = exact_pairs(first, interleavings(strategy, seed=8))
    assert again and all(one == other for one, other in again)
    assert any(one != other for one, other in exact_pairs(first, interleavings(strategy, seed=9)))
    assert len({fingerprint for _, fingerprint, _ in first}) > 5  # runs differ from one another


def exact_pairs(
    first: list[tuple[int, int, int]], second: list[tuple[int, int, int]]
) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """The runs of two series that no detached step made uncontrolled in either (each run has
    its own seed: a detach changes its run only). A loaded machine may detach a step whose
    worker the operating system leaves waiting for the GIL; the replay promise is the exact
    runs'."""
    pairs = zip(first, second, strict=True)
    return [(one, other) for one, other in pairs if one[2] == 0 and other[2] == 0]


CRITICAL_SECTION = """
import time

def critical_section(inside, worker, pause=0.0):
    # outside the code under test: no scheduling point in here
    inside.append(worker)
    if pause:
        time.sleep(pause)  # free threads: the others get in meanwhile, however loaded the machine
    total = 0
    for step in range(20000):
        total += step
    overlapped = len(inside) > 1
    inside.remove(worker)
    return overlapped
"""


def test_only_one_worker_runs_at_a_time(tmp_path: Path) -> None:
    import importlib.util
    import sys

    module_path = tmp_path / "outside_the_roots.py"
    module_path.write_text(CRITICAL_SECTION)
    spec = importlib.util.spec_from_file_location("outside_the_roots", module_path)
    assert spec is not None and spec.loader is not None
    outside = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(outside)

    def overlaps(perturbation: ControlledScheduler | None) -> int:
        inside: list[int] = []
        found: list[bool] = []

        def body(worker: int, pause: float = 0.0) -> None:
            for _ in range(5):
                found.append(outside.critical_section(inside, worker, pause))

        previous = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            if perturbation is None:  # all four start together, even on a loaded machine
                start = threading.Barrier(4)

                def free(worker: int) -> None:
                    start.wait(30)
                    body(worker, pause=0.02)  # the control: overlaps are seen when they happen

                threads = [threading.Thread(target=free, args=(w,)) for w in range(4)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            else:
                drive(perturbation, lambda: (body, lambda: True), runs=5)
        finally:
            sys.setswitchinterval(previous)
        return sum(found)

    assert overlaps(make_scheduler("random", roots=[HERE], seed=2, workers=4)) == 0
    assert overlaps(None) > 0  # the check sees overlaps when threads run freely


def two_locks_opposite_order() -> tuple[Body, Callable[[], bool]]:
    first, second = threading.Lock(), threading.Lock()

    def body(worker: int) -> None:
        a, b = (first, second) if worker == 0 else (second, first)
        with a, b:
            pass

    return body, lambda: True


def test_a_deadlock_under_control_is_reported_with_its_cycle_in_every_blocked_worker() -> None:
    sched = make_scheduler("random", roots=[HERE], seed=1, workers=2)
    failing = drive(sched, two_locks_opposite_order, runs=50)
    assert failing
    record = failing[0]
    assert {failure.worker for failure in record.failures} == {0, 1}
    text = str(record.failures[0].exception)
    assert text.startswith("DEADLOCK in run")
    assert re.search(
        r"worker 0 waits for Lock#\d+ \(test_scheduler.py:\d+\) at "
        r"test_scheduler.py:\d+; it is held by worker 1, who took it at",
        text,
    )
    assert "cycle: worker" in text
    assert primitives.originals_in_place()


@pytest.mark.parametrize("waits_on", ["event", "queue", "semaphore"])
def test_every_worker_waiting_on_what_nobody_will_signal_is_a_deadlock(waits_on: str) -> None:
    """Nobody holds what they wait for (an event never set, an empty queue, a semaphore at
    zero): after the grace period every blocked worker raises, naming what it waits for."""
    import queue

    sched = make_scheduler("pct", roots=[HERE], seed=2, workers=2)

    def make() -> tuple[Body, Callable[[], bool]]:
        never = threading.Event()
        empty: queue.Queue[int] = queue.Queue()
        zero = threading.Semaphore(0)
        wait = {"event": never.wait, "queue": empty.get, "semaphore": zero.acquire}[waits_on]

        def body(worker: int) -> None:
            wait()

        return body, lambda: True

    failing = drive(sched, make, runs=2)
    assert len(failing) == 2
    for record in failing:
        assert {failure.worker for failure in record.failures} == {0, 1}
        text = str(record.failures[0].exception)
        assert text.startswith("DEADLOCK in run")
        assert re.search(
            r"worker 0 waits for \w+#\d+ .*at test_scheduler.py:\d+; nobody holds it", text
        )
        assert re.search(r"worker 1 waits for .*; nobody holds it", text)


def test_conditions_queues_events_semaphores_and_barriers_cooperate() -> None:
    import queue

    sched = make_scheduler("pct", roots=[HERE], seed=4, workers=3)

    def make() -> tuple[Body, Callable[[], bool]]:
        items: queue.Queue[int] = queue.Queue(maxsize=1)
        done = threading.Event()
        slot = threading.BoundedSemaphore(1)
        meet = threading.Barrier(3)
        got: list[int] = []
        inside: list[int] = []
        clashes: list[int] = []

        def body(worker: int) -> None:
            meet.wait()
            with slot:
                inside.append(worker)
                clashes.extend(inside[1:])
                inside.remove(worker)
            if worker == 0:
                for item in range(4):
                    items.put(item)
                done.wait()
            elif worker == 1:
                got.extend(items.get() for _ in range(4))
                done.set()

        return body, lambda: got == [0, 1, 2, 3] and not clashes

    assert drive(sched, make, runs=30) == []
    assert all(run.detaches == 0 for run in sched.runs)


def test_a_timed_wait_times_out_when_nothing_else_can_run() -> None:
    sched = make_scheduler("pct", roots=[HERE], seed=1, workers=2)
    results: list[bool] = []

    def make() -> tuple[Body, Callable[[], bool]]:
        never = threading.Event()

        def body(worker: int) -> None:
            if worker == 0:
                results.append(never.wait(0.05))

        return body, lambda: True

    assert drive(sched, make, runs=3) == []  # drive asserts that no run hung
    assert results == [False] * 3


def test_work_outside_python_is_detached_after_its_deadline_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import _thread

    monkeypatch.setattr(scheduler, "STEP_DEADLINE", 0.1)
    sched = make_scheduler("pct", roots=[HERE], seed=1, workers=2)

    def make() -> tuple[Body, Callable[[], bool]]:
        untracked = _thread.allocate_lock()  # as if made at import time, before any window
        order: list[int] = []

        def body(worker: int) -> None:
            with untracked:  # the second worker blocks in C, holding the token
                order.append(worker)
                order.append(worker)

        return body, lambda: sorted(order) == [0, 0, 1, 1]

    assert drive(sched, make, runs=6) == []
    assert any(run.detaches for run in sched.runs)


SPIN = """
def spin_until(flag):
    # outside the code under test: no scheduling point in here, ever
    while not flag:
        pass
"""


def load_outside(tmp_path: Path, name: str, source: str):  # returns a module
    """A module outside the scheduler's roots: code it runs has no scheduling point."""
    import importlib.util

    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_step_busy_past_its_deadline_is_detached_so_others_can_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker spinning where the scheduler cannot see (C code, code outside the roots) for a
    flag only another worker sets would keep the token for ever: past STEP_DEADLINE it is
    detached, the other worker runs and sets it."""
    monkeypatch.setattr(scheduler, "STEP_DEADLINE", 0.1)
    outside = load_outside(tmp_path, "spins_outside_the_roots", SPIN)
    sched = make_scheduler("random", roots=[HERE], seed=5, workers=2)

    def make() -> tuple[Body, Callable[[], bool]]:
        flag: list[int] = []

        def body(worker: int) -> None:
            if worker == 0:
                outside.spin_until(flag)
            else:
                flag.append(1)

        return body, lambda: flag == [1]

    assert drive(sched, make, runs=8) == []
    assert any(run.detaches for run in sched.runs)  # the seed put the spinner first at least once


def test_consecutive_steps_of_a_worker_on_one_line_fold_into_one_line_of_the_report() -> None:
    site, other = (str(HERE / "x.py"), 3), (str(HERE / "x.py"), 4)
    steps = [
        runstate.Step(1, 0, site),
        runstate.Step(2, 0, site, "acquire Lock#1"),
        runstate.Step(3, 0, site, "waits for Barrier#2"),
        runstate.Step(4, 1, site),
        runstate.Step(5, 1, other),
        runstate.Step(6, 1, runstate.NO_SITE, "end"),
        runstate.Step(7, 0, site),
    ]
    lines = runreport.format_steps(steps)
    assert len(lines) == 5
    assert re.match(r"\s+step\s+1\s+worker 0\s+x.py:3\s+waits for Barrier#2.*\(x3\)$", lines[0])
    assert re.match(r"\s+step\s+4\s+worker 1\s+x.py:3", lines[1])
    assert lines[3].split() == ["step", "6", "worker", "1", "end"]


PIPE = """
import os
import pytest

@pytest.fixture
def pipe():
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)

@pytest.mark.concurrent(workers=2, runs=12, schedule="{schedule}", timeout=60)
def test_blocking_io(pipe, concurrency):
    read, write = pipe
    if concurrency.worker == 0:
        assert os.read(read, 1) == b"x"   # blocks in the OS until worker 1 has written
    else:
        os.write(write, b"x")
"""


@pytest.mark.parametrize("schedule", ["random", "pct"])
def test_blocking_io_under_control_degrades_instead_of_hanging(
    pytester, run_subprocess, schedule: str
) -> None:
    """A worker blocked in I/O holds the token: it is detached (asleep in the OS), the other
    worker runs and writes, and every run passes."""
    pytester.makepyfile(test_pipe=PIPE.format(schedule=schedule))
    result = run_subprocess("--concurrency-seed=3", "--concurrency-json=report.json")
    result.assert_outcomes(passed=1)
    assert "HANG" not in result.stdout.str()
    entry = json.loads((pytester.path / "report.json").read_text())["tests"][0]
    assert entry["schedule"]["runs"] == 12
    assert entry["schedule"]["detached_runs"] >= 1


def test_restored_after_a_failing_series() -> None:
    sched = make_scheduler("random", roots=[HERE], seed=1, workers=2)
    drive(sched, two_locks_opposite_order, runs=20)
    assert primitives.originals_in_place()
    assert threading.Lock is originals.ORIGINAL_LOCK


def test_a_tracer_beneath_ours_still_sees_the_schedulers_own_code() -> None:
    """Coverage's tracer stays on while the controlled primitives call the scheduler, so that
    the scheduler's code is measured; only the perturbation's tracer is taken off."""
    seen: set[str] = set()

    def theirs(frame: Any, event: str, arg: Any) -> None:
        if frame.f_code.co_filename == scheduler.__file__:
            seen.add(frame.f_code.co_name)

    def contended() -> tuple[Body, Callable[[], bool]]:
        lock = threading.Lock()

        def body(worker: int) -> None:
            with lock:
                time.sleep(0.001)

        return body, lambda: True

    sched = make_scheduler("random", roots=[HERE], seed=1, workers=2)
    before = threading.gettrace()
    threading.settrace(theirs)
    try:
        drive(sched, contended, runs=5)
    finally:
        threading.settrace(before)
    assert {"_block", "_sleep", "sync_point"} <= seen


# -- acceptance: pytest runs ------------------------------------------------------------------

RACY = """
import pytest

class Counter:
    def __init__(self):
        self.n = 0

    def increment(self):
        self.n += 1

@pytest.fixture
def counter():
    return Counter()

@pytest.mark.concurrent(workers=3, runs=300, schedule="pct")
def test_lost_update(counter, concurrency):
    counter.increment()
    concurrency.barrier()
    assert counter.n == 3 * (concurrency.run + 1)
"""


def failure_facts(result: pytest.RunResult) -> tuple[str, str, str, str]:
    """(failing run, interleaving, the interleaving's lines, reproduce command)."""
    text = result.stdout.str()
    run = FAILED_RUN.search(text)
    interleaving = INTERLEAVING.search(text)
    reproduce = REPRODUCE.search(text)
    assert run and interleaving and reproduce, text
    steps = "\n".join(line for line in text.splitlines() if re.match(r"E\s+step\s+\d+", line))
    return run.group(1), interleaving.group(1), steps, reproduce.group(1).strip()


def test_a_failing_seed_replays_ten_times_with_the_same_interleaving(
    pytester, run_subprocess
) -> None:
    """The Must show: the printed reproduction line, rerun 10 times in fresh processes, fails
    10 times at the same run with the same interleaving, step for step."""
    pytester.makepyfile(RACY)
    failing_run, interleaving, steps, command = exact_failure(
        run_subprocess, "--concurrency-seed=424242"
    )
    racing = {int(w) for w in re.findall(r"step\s+\d+\s+worker (\d+) .*self\.n \+= 1", steps)}
    assert len(racing) >= 2, steps  # the report shows the workers whose updates interleaved
    assert "test_lost_update --concurrency-seed=424242" in command
    args = shlex.split(command)[1:]
    for _ in range(10):
        assert exact_failure(run_subprocess, *args)[:3] == (failing_run, interleaving, steps)


def exact_failure(run_subprocess: Any, *args: str, attempts: int = 3) -> tuple[str, ...]:
    """The failure facts of a run whose failing run the scheduler controlled step for step.

    A step that leaves Python for longer than the scheduler waits (on a loaded machine, a
    worker that the operating system leaves waiting for the GIL looks asleep) is detached:
    the report says its replay may differ, and the promise is only the exact runs'. Such a
    session is run again, a few times at most."""
    for _ in range(attempts):
        result = run_subprocess(*args)
        result.assert_outcomes(failed=1)
        if messages.SCHEDULE_EXACT.strip() in result.stdout.str():
            return failure_facts(result)
        assert messages.SCHEDULE_DETACHED.split("{count}")[0].strip() in result.stdout.str()
    raise AssertionError(f"no exact run in {attempts} sessions: the machine is too loaded")


def test_a_schedule_chosen_on_the_command_line_is_in_the_reproduce_line(pytester, run) -> None:
    pytester.makepyfile(RACY.replace(', schedule="pct"', ""))
    first = run("--concurrency-seed=7", "--concurrency-schedule=pct")
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(
        [
            "concurrency: controlled schedule pct (depth 3) for thread tests; lock-order "
            "inversions: fail",
        ]
    )
    _, interleaving, _, command = failure_facts(first)
    assert "--concurrency-schedule=pct" in command
    again = run(*shlex.split(command)[1:])
    assert failure_facts(again)[1] == interleaving


def test_the_summary_and_the_json_state_pcts_bound(pytester, run) -> None:
    pytester.makepyfile(
        """
        import threading
        import pytest

        @pytest.mark.concurrent(workers=2, runs=60, schedule="pct")
        def test_locked(concurrency):
            lock = threading.Lock()
            with lock:
                pass
        """
    )
    result = run("--concurrency-json=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*controlled schedule (pct): test_*::test_locked: n=2 workers, k=* decisions per run "
            "(measured), d=3, m=* clean runs: a depth-3 bug was missed with probability <= *",
        ]
    )
    entry = json.loads((pytester.path / "report.json").read_text())["tests"][0]
    guarantee = entry["schedule"]["guarantee"]
    assert guarantee["workers"] == 2 and guarantee["depth"] == 3
    assert 0 < guarantee["clean_runs"] < 60
    assert guarantee["miss_bound"] == pytest.approx(
        pct_miss_bound(2, guarantee["steps"], 3, guarantee["clean_runs"])
    )


INVERSION = """
import threading
import pytest

class Account:
    def __init__(self):
        self.lock = threading.Lock()
        self.balance = 100

def transfer(source, target):
    with source.lock:
        with target.lock:
            source.balance -= 1
            target.balance += 1

@pytest.fixture
def accounts():
    return Account(), Account()

@pytest.mark.concurrent(workers=2, runs=20{extra})
def test_transfers(accounts, concurrency):
    a, b = accounts
    if concurrency.worker == 0:
        transfer(a, b)          # a then b
    concurrency.barrier()       # the two paths never overlap
    if concurrency.worker == 1:
        transfer(b, a)          # b then a
"""


def test_a_lock_order_inversion_that_never_deadlocks_fails_with_both_sites(pytester, run):
    pytester.makepyfile(test_bank=INVERSION.format(extra=""))
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*LOCK-ORDER INVERSION (potential deadlock): Lock#* (test_bank.py:6) and Lock#* "
            "(test_bank.py:6) are taken in opposite orders*",
            "*worker 0 took Lock#* (test_bank.py:6) at test_bank.py:11 while holding Lock#* "
            "(test_bank.py:6) (taken at test_bank.py:10)",
            "*worker 1 took Lock#* (test_bank.py:6) at test_bank.py:11 while holding Lock#* "
            "(test_bank.py:6) (taken at test_bank.py:10)",
            "*--concurrency-lock-order=warn makes this a warning*",
        ]
    )
    result.stdout.fnmatch_lines(["*lock-order inversions: test_bank.py::test_transfers: 1 (fail)"])
    assert "DEADLOCK" not in result.stdout.str()


@pytest.mark.parametrize("how", [', lock_order="warn"', "--concurrency-lock-order=warn"])
def test_lock_order_warn_makes_it_a_warning(pytester, run, how: str) -> None:
    marker = how if how.startswith(",") else ""
    pytester.makepyfile(test_bank=INVERSION.format(extra=marker))
    result = run("-W", "default", *([] if marker else [how]))  # this suite makes warnings errors
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*LockOrderWarning: LOCK-ORDER INVERSION*"])


def test_lock_order_off_tracks_nothing(pytester, run) -> None:
    pytester.makepyfile(
        test_bank=INVERSION.format(extra=', lock_order="off"')
        + "\ndef test_lock_is_real():\n    assert threading.Lock is "
        "threading._allocate_lock or threading.Lock.__module__ == '_thread'\n"
    )
    result = run()
    result.assert_outcomes(passed=2)


DEADLOCK = """
import threading
import pytest

class Account:
    def __init__(self):
        self.lock = threading.Lock()

@pytest.fixture
def accounts():
    return Account(), Account()

@pytest.mark.concurrent(workers=2, runs=20, timeout=30{extra})
def test_deadlock(accounts, concurrency):
    a, b = accounts
    first, second = (a, b) if concurrency.worker == 0 else (b, a)
    with first.lock:
        {meet}
        with second.lock:
            pass
"""

NO_THREAD_LEFT = """
import threading, time

def pytest_unconfigure(config):
    deadline = time.monotonic() + 5
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    with open("threads-left.txt", "w") as out:
        out.write(repr(sorted(t.name for t in threading.enumerate()
                              if t is not threading.main_thread())))
"""


@pytest.mark.parametrize(
    ("extra", "meet", "headline"),
    [
        ("", "concurrency.barrier()", "*DEADLOCK: these threads wait for each other for ever*"),
        (', schedule="random"', "pass", "*DEADLOCK in run * (controlled schedule, step *)*"),
    ],
    ids=["plain-watchdog", "controlled"],
)
def test_a_real_deadlock_is_reported_as_one_in_time_and_pytest_exits_cleanly(
    pytester, run_subprocess, extra: str, meet: str, headline: str
) -> None:
    pytester.makeconftest(NO_THREAD_LEFT)
    pytester.makepyfile(test_deadlock=DEADLOCK.format(extra=extra, meet=meet))
    result = run_subprocess()
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([headline])
    text = result.stdout.str()
    # the wait-for cycle: each worker, the lock it waits on and where, the worker holding it
    # and where that one took it
    waits = set(
        re.findall(
            r"worker (\d) waits for Lock#\d+ \(test_deadlock.py:6\) at test_deadlock.py:18; it "
            r"is held by worker (\d), who took it at test_deadlock.py:16",
            text,
        )
    )
    assert {("0", "1"), ("1", "0")} <= waits, text
    if extra:
        assert re.search(
            r"cycle: worker (\d) -> Lock#\d+ .* -> worker (?!\1)\d -> .* -> worker \1", text
        )
    else:
        assert "was stopped with this error to break the cycle" in text
    assert "HANG" not in text  # reported as a deadlock, not by the run's 30 s timeout
    assert "INTERNALERROR" not in text + result.stderr.str()
    assert (pytester.path / "threads-left.txt").read_text() == "[]"


RESTORED = """
import sys, threading, time, _thread, queue

def state():
    return (threading.Lock, threading.RLock, threading.Condition, time.sleep,
            sys.gettrace(), threading.gettrace(), sys.getswitchinterval())

ORIGINALS = state()
CHANGED = []

def pytest_runtest_logfinish(nodeid):
    if state() != ORIGINALS:
        CHANGED.append((nodeid, state()))

def pytest_unconfigure(config):
    with open("restored.txt", "w") as out:
        out.write(repr(CHANGED))
"""


def test_primitives_are_patched_during_the_test_and_restored_after(
    pytester, run_subprocess
) -> None:
    """Locks, sleep, the trace function and the switch interval are back after every test:
    passing, failing, or stopped by a deadlock, controlled or plain."""
    pytester.makeconftest(RESTORED)
    pytester.makepyfile(
        """
        import threading, time
        import pytest
        from threading import Lock

        @pytest.fixture
        def lock():
            return threading.Lock()

        @pytest.mark.concurrent(workers=2, runs=5, schedule="pct")
        def test_controlled(lock):
            assert type(lock).__name__ == "TrackedLock"
            assert type(Lock()).__name__ == "TrackedLock"  # the module's own binding too
            with lock:
                time.sleep(0.001)

        @pytest.mark.concurrent(workers=2, runs=5)
        def test_fails_plain(lock):
            assert type(lock).__name__ == "TrackedLock"
            assert False

        @pytest.mark.concurrent(workers=2, runs=5, schedule="pct")
        def test_fails_controlled(lock):
            with lock:
                assert False

        @pytest.fixture
        def two_locks():
            return threading.Lock(), threading.Lock()

        @pytest.mark.concurrent(workers=2, runs=20, schedule="random", timeout=30)
        def test_deadlocks_controlled(two_locks, concurrency):
            first, second = two_locks
            a, b = (first, second) if concurrency.worker == 0 else (second, first)
            with a, b:
                pass

        def test_not_concurrent():
            assert type(threading.Lock()).__name__ != "TrackedLock"
        """
    )
    result = run_subprocess()
    result.assert_outcomes(passed=2, failed=3)
    assert "DEADLOCK in run" in result.stdout.str()
    assert (pytester.path / "restored.txt").read_text() == "[]"


def test_the_harness_takes_a_schedule(pytester, run) -> None:
    pytester.makepyfile(
        """
        def test_harness(concurrency):
            class Box:
                value = 0
            for run in concurrency.runs(200, schedule="pct"):
                box = Box()
                def bump():
                    box.value += 1
                run(bump, workers=2)
                assert box.value == 2
        """
    )
    result = run("--concurrency-seed=5")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*controlled schedule (pct, depth 3)*interleaving*",
            "*interleaving, the last * steps of the run whose check failed:",
            "*box.value += 1*",
            "*FAILED after run * of 200*the check after the run failed",
            "*reproduce: pytest *--concurrency-seed=5",
            "*controlled schedule (pct): *::test_harness: found a failure in run *",
        ]
    )


def test_bad_schedule_values_name_their_source(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(schedule="sometimes")
        def test_bad():
            pass

        @pytest.mark.concurrent(mode="processes", schedule="pct")
        def test_not_threads():
            pass
        """
    )
    result = run()
    result.assert_outcomes(errors=1, failed=1)  # a bad marker fails the setup
    result.stdout.fnmatch_lines(
        [
            "*invalid schedule='sometimes' in @pytest.mark.concurrent on *test_bad: expected one of "
            "off, random, pct, on*",
        ]
    )
    assert messages.SCHEDULE_NEEDS_THREADS.format(
        schedule="pct",
        nodeid="test_bad_schedule_values_name_their_source.py::test_not_threads",
        mode="processes",
    ) in result.stdout.str().replace("\n", "")
    cli = run("--concurrency-schedule=pcx")
    assert cli.ret == pytest.ExitCode.USAGE_ERROR
    cli.stderr.fnmatch_lines(['*invalid --concurrency-schedule=pcx*did you mean "pct"*'])


def test_random_and_pct_draw_from_the_seed_not_from_the_clock() -> None:
    rng = random.Random(0)
    seeds = [rng.randrange(2**32) for _ in range(3)]
    for name in strategies.STRATEGIES:
        picks = []
        for seed in seeds * 2:
            strategy = strategies.make_strategy(name)
            if isinstance(strategy, PCTStrategy):
                strategy.max_decisions = 50
            strategy.begin_run(4, seed)
            picks.append([strategy.pick([0, 1, 2, 3], running=0) for _ in range(60)])
        assert picks[:3] == picks[3:]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("on", settings.DEFAULT_STRATEGY),
        (True, settings.DEFAULT_STRATEGY),
        (False, "off"),
        ("PCT", "pct"),
        ("random", "random"),
    ],
)
def test_schedule_values(raw: object, expected: str) -> None:
    source = settings.Source("marker", "schedule=", "a test")
    assert settings.parse_schedule(raw, source) == expected
