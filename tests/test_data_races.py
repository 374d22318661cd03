"""Acceptance: the race that did not happen is reported (issue 18).

Every test here runs one run with perturbation off (``runs=1, perturb=False``), so that the
bad interleaving almost never happens: what fails the racy tests is the data-race report, not an
assertion. The twins use each synchronization form and must never be reported.
"""

from __future__ import annotations

import json

from pytest_concurrency import messages
from pytest_concurrency.engine.dataraces import KIND_ITERATION, KIND_STALE_READ, KIND_TORN_READ

ONE_QUIET_RUN = "workers=4, runs=1, perturb=False"
WARNING = "pytest_concurrency.plugin.verdicts.ConcurrencyDataRaceWarning"
SHOW_WARNING = ("-W", f"default::{WARNING}")
"""A data race under ``data_races="warn"`` is a warning, shown as in a user's suite (the runs
that warn are subprocesses: this suite's own ``filterwarnings = error`` reaches in-process
runs)."""

INVENTORY = """
import threading
import pytest

class Inventory:
    def __init__(self):
        self.stock = 1000

    def take(self):
        if self.stock > 0:
            self.stock -= 1
        return True

inventory = Inventory()
"""


def _entries(path) -> dict[str, dict]:
    document = json.loads(path.read_text())
    return {entry["nodeid"].rsplit("::", 1)[1]: entry for entry in document["tests"]}


def test_a_lost_update_whose_assertion_passes_fails_with_the_report(pytester, run) -> None:
    pytester.makepyfile(
        INVENTORY
        + f"""
@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_take():
    assert inventory.take()
"""
    )
    result = run("--concurrency-json=out.json")
    result.assert_outcomes(failed=1)
    headline = messages.HEADLINE_DATA_RACE.split("{")[0]
    result.stdout.fnmatch_lines(
        [
            f"*{headline}*",
            "*Inventory.stock: read-then-write: worker * read it and wrote it at "
            "test_a_lost_update_whose_assertion_passes_fails_with_the_report.py:10, unordered "
            "with worker *",
            "*worker * read at *.py:1[0] in test_take > *take (holding no lock)",
            "*worker * at *.py:* (holding no lock)",
            "*reproduce: pytest*",
            "data races: *::test_take: 1 (failed): Inventory.stock (read-then-write)",
        ]
    )
    entry = _entries(pytester.path / "out.json")["test_take"]
    assert entry["failures"] == []  # no call failed: the race is counted apart
    (race,) = entry["data_races"]
    assert race["location"] == "Inventory.stock"
    assert race["kind"] == KIND_STALE_READ
    first, second = race["accesses"]
    assert set(first) == {"worker", "file", "line", "op", "locks", "path"}
    # the call path in user code (3.10 has no co_qualname: "take" there)
    assert first["path"] in (["test_take", "Inventory.take"], ["test_take", "take"])
    assert first["op"] == "read" and first["locks"] == [] and first["file"].endswith(".py")
    assert second["op"] in ("read", "write") and second["worker"] != first["worker"]


def test_a_harness_loop_keeps_the_machinery_and_the_watch_starts_afresh_each_run(
    pytester, run
) -> None:
    """A ``concurrency.runs()`` loop keeps the perturbation's machinery from run to run
    (issue 16): the watch around it takes part in the loop, and each run is watched anew."""
    pytester.makepyfile(
        INVENTORY
        + """
def test_loop(concurrency):
    for run in concurrency.runs(3):
        fresh = Inventory()
        run(fresh.take, workers=4)


def test_locked_loop(concurrency):
    lock = threading.Lock()

    def take(stock):
        with lock:
            stock.take()

    for run in concurrency.runs(3):
        fresh = Inventory()
        run(lambda: take(fresh), workers=4)
"""
    )
    result = run("--concurrency-json=out.json", "--concurrency-perturb=false")
    result.assert_outcomes(failed=1, passed=1)
    assert "AttributeError" not in result.stdout.str()
    result.stdout.fnmatch_lines(["data races: *::test_loop: 1 (failed): Inventory.stock*"])
    entries = _entries(pytester.path / "out.json")
    assert [race["location"] for race in entries["test_loop"]["data_races"]] == ["Inventory.stock"]
    assert not entries["test_locked_loop"].get("data_races")


def test_check_then_act_lazy_init_and_iteration_in_the_users_terms(pytester, run) -> None:
    pytester.makepyfile(
        settings="""
        class Settings:
            pass

        _instance = None

        def get():
            global _instance
            if _instance is None:
                _instance = Settings()
            return _instance
        """
    )
    pytester.makepyfile(
        f"""
        import pytest
        import settings

        _cache = {{}}

        def cached(key):
            if key not in _cache:
                _cache[key] = object()
            return _cache[key]

        class Bus:
            def __init__(self):
                self._handlers = {{"a": 1, "b": 2}}

            def publish(self):
                delivered = 0
                for name in self._handlers:
                    delivered += 1
                return delivered

            def subscribe(self, name):
                self._handlers[name] = 3

        bus = Bus()

        @pytest.mark.concurrent({ONE_QUIET_RUN})
        def test_cache():
            assert cached("k") is not None

        @pytest.mark.concurrent({ONE_QUIET_RUN})
        def test_lazy_module_singleton():
            assert settings.get() is not None

        @pytest.mark.concurrent({ONE_QUIET_RUN})
        def test_bus(concurrency):
            if concurrency.worker == 0:
                bus.subscribe(f"w{{concurrency.run}}")
            else:
                bus.publish()
        """
    )
    result = run("--concurrency-json=out.json", "-p", "no:randomly")
    result.assert_outcomes(failed=3)
    entries = _entries(pytester.path / "out.json")
    assert [(r["location"], r["kind"]) for r in entries["test_cache"]["data_races"]] == [
        ("_cache['k']", KIND_STALE_READ)
    ]
    assert [r["location"] for r in entries["test_lazy_module_singleton"]["data_races"]] == [
        "settings._instance"
    ]
    iteration = entries["test_bus"]["data_races"]
    assert [(r["location"], r["kind"]) for r in iteration] == [("Bus._handlers", KIND_ITERATION)]
    assert [a["op"] for a in iteration[0]["accesses"]] == ["read", "write"]


SYNCHRONIZED = f"""
import queue
import threading
import pytest

class Counter:
    def __init__(self):
        self.n = 0

lock_counter, rlock_counter, cond_counter = Counter(), Counter(), Counter()
event_counter, queue_counter, barrier_counter = Counter(), Counter(), Counter()
run_barrier_counter, join_counter = Counter(), Counter()
LOCK = threading.Lock()
RLOCK = threading.RLock()
COND = threading.Condition()
BARRIER = threading.Barrier(4)
EVENTS = {{}}
QUEUES = {{}}

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_lock():
    with LOCK:
        lock_counter.n += 1

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_rlock():
    with RLOCK:
        with RLOCK:
            rlock_counter.n += 1

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_condition(concurrency):
    with COND:
        while cond_counter.n != concurrency.worker:
            COND.wait()
        cond_counter.n += 1
        COND.notify_all()

@pytest.fixture
def event():
    return threading.Event()

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_event(concurrency, event):
    if concurrency.worker == 0:
        event_counter.n += 1
        event.set()
    else:
        event.wait()
        assert event_counter.n >= 1

@pytest.fixture
def handoff():
    return queue.Queue()

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_queue(concurrency, handoff):
    if concurrency.worker == 0:
        queue_counter.n += 1
        for _ in range(3):
            handoff.put(queue_counter.n)
    else:
        assert handoff.get() == queue_counter.n == 1

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_threading_barrier(concurrency):
    if concurrency.worker == 0:
        barrier_counter.n += 1
    BARRIER.wait()
    if concurrency.worker == 1:
        barrier_counter.n += 1

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_run_barrier(concurrency):
    if concurrency.worker == 0:
        run_barrier_counter.n += 1
    concurrency.barrier()
    if concurrency.worker == 1:
        run_barrier_counter.n += 1

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_join():
    box = Counter()
    helper = threading.Thread(target=lambda: setattr(box, "n", 1))
    helper.start()
    helper.join()
    box.n += 1

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_thread_confined():
    mine = Counter()
    for _ in range(3):
        mine.n += 1

LIMITS = {{"max": 3}}

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_immutable_reads():
    assert LIMITS["max"] == 3

class Cache:
    def __init__(self):
        self._data = {{}}
        self._lock = threading.Lock()

    def get(self, key):
        if key in self._data:  # double-checked locking: the check outside is on purpose
            return self._data[key]
        with self._lock:
            if key not in self._data:
                self._data[key] = object()
            return self._data[key]

cache = Cache()

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_double_checked_locking():
    assert cache.get("k") is cache.get("k")

shared_list, shared_dict = [], {{}}

@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_atomic_operations_alone(concurrency):
    shared_list.append(concurrency.worker)
    shared_dict[concurrency.worker] = 1
"""


def test_every_synchronization_form_orders_the_accesses(pytester, run) -> None:
    pytester.makepyfile(SYNCHRONIZED)
    result = run("--concurrency-json=out.json", "-p", "no:randomly")
    result.assert_outcomes(passed=12)
    assert all(entry["data_races"] == [] for entry in _entries(pytester.path / "out.json").values())


def test_warn_reports_without_failing_and_off_tracks_nothing(pytester, run_subprocess) -> None:
    pytester.makepyfile(
        INVENTORY
        + f"""
@pytest.mark.concurrent({ONE_QUIET_RUN}, data_races="warn")
def test_warned():
    inventory.take()

@pytest.mark.concurrent({ONE_QUIET_RUN}, data_races="off")
def test_off():
    inventory.take()

@pytest.mark.concurrent({ONE_QUIET_RUN}, data_race_allow="Inventory.*")
def test_allowed():
    inventory.take()
"""
    )
    result = run_subprocess("--concurrency-json=out.json", "-p", "no:randomly", *SHOW_WARNING)
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(
        ["data races: *::test_warned: 1 (reported): Inventory.stock (read-then-write)"]
    )
    entries = _entries(pytester.path / "out.json")
    assert [r["location"] for r in entries["test_warned"]["data_races"]] == ["Inventory.stock"]
    assert entries["test_off"]["data_races"] == []
    assert entries["test_allowed"]["data_races"] == []


def test_the_command_line_and_a_bad_value(pytester, run, run_subprocess) -> None:
    pytester.makepyfile(
        INVENTORY
        + f"""
@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_take():
    inventory.take()
"""
    )
    warned = run_subprocess("--concurrency-data-races=warn", *SHOW_WARNING)
    warned.assert_outcomes(passed=1, warnings=1)
    bad = run("--concurrency-data-races=loud")
    assert bad.ret != 0
    bad.stdout.no_fnmatch_line("*INTERNALERROR*")
    bad.stderr.fnmatch_lines(["*--concurrency-data-races*expected one of fail, warn, off*"])


def test_the_harness_reports_it_too(pytester, run) -> None:
    pytester.makepyfile(
        INVENTORY
        + """
def test_harness(concurrency):
    for run in concurrency.runs(1):
        shop = Inventory()
        run(shop.take, workers=4)
        assert shop.stock <= 1000
"""
    )
    result = run("--concurrency-perturb=false", "--concurrency-json=out.json")
    result.assert_outcomes(failed=1)
    entry = _entries(pytester.path / "out.json")["test_harness"]
    assert [r["location"] for r in entry["data_races"]] == ["Inventory.stock"]


def test_run_all_reports_it_in_an_unmarked_test(pytester, run) -> None:
    pytester.makepyfile(
        INVENTORY
        + """
def test_unmarked():
    inventory.take()
"""
    )
    result = run(
        "--concurrency-all",
        "--concurrency-runs=1",
        "--concurrency-perturb=false",
        "--concurrency-json=out.json",
    )
    result.assert_outcomes(failed=1)
    entry = _entries(pytester.path / "out.json")["test_unmarked"]
    assert [r["location"] for r in entry["data_races"]] == ["Inventory.stock"]


def test_an_assertion_failure_keeps_its_report_and_the_race_is_added(pytester, run) -> None:
    pytester.makepyfile(
        INVENTORY
        + f"""
@pytest.mark.concurrent({ONE_QUIET_RUN})
def test_take(concurrency):
    inventory.take()
    assert concurrency.worker != 2, "worker 2 fails"
"""
    )
    result = run("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*AssertionError at *:* (1 call: worker 2)*", "*Inventory.stock: read-then-write*"]
    )
    result.stdout.no_fnmatch_line("*DataRace at*")


def test_a_length_check_then_append_is_reported_and_its_locked_twin_is_not(pytester, run) -> None:
    pytester.makepyfile(
        f"""
        import threading
        import pytest

        class Buffer:
            def __init__(self):
                self._items = []

            def put(self, item):
                if len(self._items) >= 100:
                    return False
                self._items.append(item)
                return True

        class LockedBuffer(Buffer):
            def __init__(self):
                super().__init__()
                self._lock = threading.Lock()

            def put(self, item):
                with self._lock:
                    return super().put(item)

        buffer = Buffer()
        # made at import, in a list: out of the tracked window's reach, a real lock
        LOCKED = [LockedBuffer() for _ in range(2)]

        @pytest.mark.concurrent({ONE_QUIET_RUN})
        def test_buffer():
            assert buffer.put(1)

        @pytest.mark.concurrent({ONE_QUIET_RUN})
        def test_locked_buffer():
            assert LOCKED[0].put(1)
        """
    )
    result = run("--concurrency-json=out.json", "-p", "no:randomly")
    result.assert_outcomes(failed=1, passed=1)
    entries = _entries(pytester.path / "out.json")
    assert [r["location"] for r in entries["test_buffer"]["data_races"]] == ["Buffer._items"]
    assert entries["test_locked_buffer"]["data_races"] == []


def test_odd_user_objects_never_break_the_call_or_the_plugin(pytester, run_subprocess) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        class Key:
            def __init__(self):
                self.hashed = 0

            def __hash__(self):
                self.hashed += 1
                return 1

        class Shy:
            __slots__ = ("value",)

            def __init__(self):
                self.value = 0

            def __getattr__(self, name):
                raise RuntimeError("the tracer ran __getattr__")

        class Lazy:
            @property
            def total(self):
                raise RuntimeError("the tracer ran a property")

        shy, lazy, table = Shy(), Lazy(), {{}}

        @pytest.mark.concurrent({ONE_QUIET_RUN}, data_races="warn")
        def test_odd():
            key = Key()
            table[key] = 1
            assert key.hashed == 1  # by the dict, never by the tracer
            shy.value += 1
            with pytest.raises(RuntimeError, match="property"):
                lazy.total
        """
    )
    result = run_subprocess("-p", "no:randomly", *SHOW_WARNING)
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*pytest_concurrency/races*")


def test_warn_makes_a_pytest_warning_and_w_error_makes_it_a_failure(
    pytester, run_subprocess
) -> None:
    """``data_races="warn"`` (marker or command line): a ``ConcurrencyDataRaceWarning`` in the
    warnings summary, marked test and harness alike; ``-W error::...`` fails the test."""
    pytester.makepyfile(
        INVENTORY
        + f"""
@pytest.mark.concurrent({ONE_QUIET_RUN}, data_races="warn")
def test_marked():
    inventory.take()

def test_harness(concurrency):
    for run in concurrency.runs(1):
        run(inventory.take, workers=4)
"""
    )
    quiet = ("--concurrency-perturb=false", "-p", "no:randomly")
    result = run_subprocess(*quiet, *SHOW_WARNING)
    result.assert_outcomes(passed=1, failed=1, warnings=1)  # the harness: data_races="fail"
    result.stdout.fnmatch_lines(
        ["*warnings summary*", "*ConcurrencyDataRaceWarning: data races, reported as a warning*"]
    )
    warned = run_subprocess(*quiet, "--concurrency-data-races=warn", *SHOW_WARNING)
    warned.assert_outcomes(passed=2, warnings=2)
    warned.stdout.fnmatch_lines(["*Inventory.stock: read-then-write*"])
    failed = run_subprocess(*quiet, "--concurrency-data-races=warn", "-W", f"error::{WARNING}")
    failed.assert_outcomes(failed=2)
    failed.stdout.fnmatch_lines(["*ConcurrencyDataRaceWarning: data races*"])


def test_a_call_result_iterated_and_a_torn_read_are_reported_and_their_locked_twins_not(
    pytester, run
) -> None:
    """``self.handlers().values()`` (an operand made by a call of the user's code that returns
    the shared dict) iterated while another worker changes it; two dicts read while another
    worker moves an item from one to the other. Their twins hold one lock."""
    pytester.makepyfile(
        f"""
        import threading
        import pytest

        class Bus:
            def __init__(self, lock=None):
                self._handlers = {{"a": 1, "b": 2}}
                self._lock = lock

            def handlers(self):
                return self._handlers

            def publish(self):
                if self._lock is None:
                    return self.deliver()
                with self._lock:
                    return self.deliver()

            def deliver(self):
                delivered = 0
                for _handler in self.handlers().values():
                    delivered += 1
                return delivered

            def churn(self, name):
                if self._lock is not None:
                    with self._lock:
                        self._handlers[name] = 3
                        del self._handlers[name]
                    return
                self._handlers[name] = 3
                del self._handlers[name]

        class Board:
            def __init__(self, lock=None):
                self.pending = {{f"job-{{n}}": n for n in range(4)}}
                self.done = {{}}
                self._lock = lock or _NoLock()

            def move(self, job):
                with self._lock:
                    self.done[job] = self.pending.pop(job)
                    self.pending[job] = self.done.pop(job)

            def total(self):
                with self._lock:
                    return len(self.pending) + len(self.done)

        class _NoLock:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return None

        bus, locked_bus = Bus(), Bus(threading.Lock())
        board, locked_board = Board(), Board(threading.Lock())

        def use_bus(bus, concurrency):
            if concurrency.worker % 2:
                bus.churn(f"w{{concurrency.worker}}")
            else:
                bus.publish()

        def use_board(board, concurrency):
            if concurrency.worker % 2:
                board.total()
            else:
                board.move(f"job-{{concurrency.worker}}")

        @pytest.mark.concurrent({ONE_QUIET_RUN})
        def test_bus(concurrency):
            use_bus(bus, concurrency)

        @pytest.mark.concurrent({ONE_QUIET_RUN})
        def test_locked_bus(concurrency):
            use_bus(locked_bus, concurrency)

        @pytest.mark.concurrent({ONE_QUIET_RUN})
        def test_board(concurrency):
            use_board(board, concurrency)

        @pytest.mark.concurrent({ONE_QUIET_RUN})
        def test_locked_board(concurrency):
            use_board(locked_board, concurrency)
        """
    )
    result = run("--concurrency-json=out.json", "-p", "no:randomly")
    result.assert_outcomes(failed=2, passed=2)
    entries = _entries(pytester.path / "out.json")
    assert [(r["location"], r["kind"]) for r in entries["test_bus"]["data_races"]] == [
        ("Bus._handlers", KIND_ITERATION)
    ]
    assert [(r["location"], r["kind"]) for r in entries["test_board"]["data_races"]] == [
        ("Board.pending", KIND_TORN_READ)
    ]
    result.stdout.fnmatch_lines(
        ["*Board.pending: torn-read: worker * read it and then Board.done, while worker *"]
    )
    assert entries["test_locked_bus"]["data_races"] == []
    assert entries["test_locked_board"]["data_races"] == []


def test_a_truth_test_then_pop_is_reported_and_its_locked_twin_is_not(pytester, run) -> None:
    """``if not self._items: return None`` then ``self._items.pop(0)``: the truth test is a
    read of the whole container, so two consumers make a check-then-act."""
    pytester.makepyfile(
        f"""
        import threading
        import pytest

        class Stack:
            def __init__(self, lock=None):
                self._items = list(range(100))
                self._lock = lock

            def take(self):
                if self._lock is None:
                    return self._take()
                with self._lock:
                    return self._take()

            def _take(self):
                if not self._items:
                    return None
                return self._items.pop(0)

        stack, locked = Stack(), Stack(threading.RLock())

        @pytest.mark.concurrent({ONE_QUIET_RUN})
        def test_take():
            stack.take()

        @pytest.mark.concurrent({ONE_QUIET_RUN})
        def test_locked_take():
            locked.take()
        """
    )
    result = run("--concurrency-json=out.json", "-p", "no:randomly")
    result.assert_outcomes(failed=1, passed=1)
    entries = _entries(pytester.path / "out.json")
    assert [(r["location"], r["kind"]) for r in entries["test_take"]["data_races"]] == [
        ("Stack._items", KIND_STALE_READ)
    ]
    assert entries["test_locked_take"]["data_races"] == []
