"""Acceptance: the concurrent marker runs a test body in threads, and reports what it saw."""

from __future__ import annotations

import json
import re

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine import report


def test_marker_fixture_and_options_are_documented(run) -> None:
    markers = run("--markers")
    markers.stdout.fnmatch_lines(
        ["@pytest.mark.concurrent(workers=*", "@pytest.mark.not_concurrent*"]
    )
    fixtures = run("--fixtures")
    fixtures.stdout.fnmatch_lines(["concurrency*", "*Who am I*"])
    helptext = run("--help")
    for option in ("mode", "workers", "runs", "seed", "budget", "all", "json", "plot", "timeout"):
        assert f"--concurrency-{option}" in helptext.stdout.str()


def test_body_runs_in_every_worker_every_run_with_shared_fixtures(pytester, run) -> None:
    pytester.makepyfile(
        """
        import threading
        import pytest

        CALLS = []
        LOCK = threading.Lock()

        @pytest.fixture
        def shared():
            return object()

        @pytest.mark.concurrent(workers=5, runs=7, perturb=False)
        def test_body(shared, concurrency):
            with LOCK:
                CALLS.append((concurrency.worker, concurrency.run, id(shared),
                              threading.current_thread().name, concurrency.workers,
                              concurrency.mode))

        def test_check():
            assert len(CALLS) == 35
            assert {(w, r) for w, r, *_ in CALLS} == {(w, r) for w in range(5) for r in range(7)}
            assert len({ident for _, _, ident, *_ in CALLS}) == 1
            assert len({name for *_, name, _, _ in CALLS}) == 5
            assert {(n, m) for *_, n, m in CALLS} == {(5, "threads")}
        """
    )
    run().assert_outcomes(passed=2)


def test_workers_start_together_at_the_barrier(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        ARRIVED = []

        @pytest.mark.concurrent(workers=4, runs=10)
        def test_meet(concurrency):
            ARRIVED.append((concurrency.run, concurrency.worker))
            concurrency.barrier()
            mine = [w for r, w in ARRIVED if r == concurrency.run]
            assert len(mine) == 4
        """
    )
    run().assert_outcomes(passed=1)


RACY = """
import pytest

class Account:
    def __init__(self):
        self.balance = 100

    def withdraw(self, amount):
        if self.balance >= amount:
            current = self.balance
            self.balance = current - amount
            return True
        return False

@pytest.fixture
def account():
    return Account()

@pytest.mark.concurrent(workers=4, runs=200)
def test_never_overdrawn(account, concurrency):
    account.withdraw(60)
    concurrency.barrier()
    assert account.balance >= 0
    concurrency.barrier()
    if concurrency.worker == 0:
        account.balance = 100
    concurrency.barrier()
"""


def test_failure_report_groups_origins_and_ends_with_reproduce_line(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=4, runs=3)
        def test_two_origins(concurrency):
            if concurrency.worker in (1, 3):
                raise KeyError("missing")
            if concurrency.worker == 2:
                assert concurrency.worker == 0
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ExceptionGroup: 2 distinct failures in run 0 of a concurrent test*",
            "*RACE DETECTED in run 0 of 3 (4 threads, seed *): 3 of 4 calls failed",
            "*KeyError at test_failure_report_groups_origins_and_ends_with_reproduce_line.py:6"
            " (2 calls: workers 1, 3)",
            "*AssertionError at test_failure_report_groups_origins_and_ends_with_reproduce_line.py:8"
            " (1 call: worker 2)",
            "*reproduce: pytest test_failure_report_groups_origins_and_ends_with_reproduce_line.py"
            "::test_two_origins --concurrency-seed=*",
        ]
    )
    # The traceback starts in the user's code, not in the plugin.
    assert "pytest_concurrency/" not in result.stdout.str()


def test_single_origin_raises_the_users_exception(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=3, runs=2)
        def test_one(concurrency):
            if concurrency.run == 1 and concurrency.worker == 2:
                assert 1 + 1 == 3, "arithmetic"
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">*assert 1 + 1 == 3*",
            "E*AssertionError: arithmetic",
            "E*RACE DETECTED in run 1 of 2 (3 threads, seed *): 1 of 6 calls failed",
            "E*AssertionError at test_single_origin_raises_the_users_exception.py:6*worker 2)",
            "E*reproduce: pytest *",
        ]
    )
    assert "ExceptionGroup" not in result.stdout.str()
    assert "pytest_concurrency/" not in result.stdout.str()


def test_first_failing_run_stops_the_series(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        SEEN = set()

        @pytest.mark.concurrent(workers=2, runs=50)
        def test_stop(concurrency):
            SEEN.add(concurrency.run)
            assert concurrency.run < 3

        def test_after():
            assert SEEN == {0, 1, 2, 3}
        """
    )
    run().assert_outcomes(passed=1, failed=1)


def test_reproduction_line_reproduces_the_failure(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=3, runs=200)
        def test_seeded(concurrency):
            # fails in a run chosen by the seed: the same seed must fail in the same run
            assert concurrency.run_seed % 7 != 0
        """
    )
    first = run()
    first.assert_outcomes(failed=1)
    text = first.stdout.str()
    line = re.search(r"reproduce: pytest (\S+) (--concurrency-seed=\d+)", text)
    assert line is not None
    failing = re.search(r"in run (\d+) of 200", text)
    assert failing is not None
    again = run(line.group(1), line.group(2))
    again.assert_outcomes(failed=1)
    assert re.search(rf"in run {failing.group(1)} of 200", again.stdout.str())


def test_same_seed_same_run_seeds_different_seed_differs(pytester, run) -> None:
    pytester.makepyfile(
        """
        import json, os, pytest

        @pytest.mark.concurrent(workers=2, runs=5)
        def test_record(concurrency):
            with open(os.environ["SEEDS_OUT"], "a") as out:
                out.write(json.dumps([concurrency.run, concurrency.run_seed, concurrency.seed]) + "\\n")
        """
    )
    out = pytester.path / "seeds.txt"

    def seeds(seed: str) -> set[tuple[int, int, int]]:
        out.write_text("")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SEEDS_OUT", str(out))
            run(f"--concurrency-seed={seed}").assert_outcomes(passed=1)
        return {tuple(json.loads(line)) for line in out.read_text().splitlines()}

    assert seeds("11") == seeds("11")
    assert seeds("11") != seeds("12")


def test_skip_in_a_worker_never_hides_a_failure(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=4, runs=2)
        def test_mixed(concurrency):
            if concurrency.worker == 0:
                pytest.skip("worker 0 skips")
            assert concurrency.worker != 3

        @pytest.mark.concurrent(workers=4, runs=2)
        def test_all_skip():
            pytest.skip("nothing to do here")
        """
    )
    result = run("-rs")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*nothing to do here*"])


def test_xfail_works_on_a_concurrent_test(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.xfail(reason="known race", strict=True)
        @pytest.mark.concurrent(workers=2, runs=3)
        def test_known(concurrency):
            assert concurrency.worker == 0

        @pytest.mark.xfail(reason="no race after all", strict=True)
        @pytest.mark.concurrent(workers=2, runs=3)
        def test_fixed(concurrency):
            pass
        """
    )
    result = run()
    result.assert_outcomes(xfailed=1, failed=1)
    result.stdout.fnmatch_lines(["*XPASS(strict)*no race after all*"])


def test_header_names_seed_defaults_cores_and_gil(pytester, run) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run("--concurrency-seed=4242")
    result.stdout.fnmatch_lines(
        [
            "concurrency: seed 4242 (replay: --concurrency-seed=4242); defaults: threads, "
            "4 workers, 100 runs, perturbation on",
            "concurrency: cores * usable*; *GIL*",
        ]
    )


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        (
            "workers=-3",
            "*invalid workers=-3 in @pytest.mark.concurrent on *: expected a whole "
            "number from 1 to 4096*",
        ),
        ("mode='thread'", "*invalid mode='thread'*did you mean \"threads\"?*"),
        ("wrokers=3", '*unknown argument wrokers=*Did you mean "workers="?*'),
        ("runs=0", "*invalid runs=0*"),
        ("timeout='soon'", "*invalid timeout='soon'*seconds greater than 0*"),
        ("8", "*takes keyword arguments only*"),
    ],
)
def test_bad_marker_arguments_are_clear_errors(pytester, run, marker: str, expected: str) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.concurrent({marker})
        def test_bad():
            pass
        """
    )
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([expected])
    assert "INTERNALERROR" not in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--concurrency-workers=0"], {}, "*invalid --concurrency-workers=0*"),
        (["--concurrency-mode=fibers"], {}, "*invalid --concurrency-mode=fibers*one of threads*"),
        (
            [],
            {"PYTEST_CONCURRENCY_RUNS": "many"},
            "*invalid environment variable PYTEST_CONCURRENCY_RUNS=many*",
        ),
        (["--concurrency-seed=last"], {}, "*" + messages.SEED_LAST_MISSING[:40] + "*"),
        (["--concurrency-budget=-1"], {}, "*invalid --concurrency-budget=-1*"),
    ],
)
def test_bad_options_are_usage_errors(pytester, run, monkeypatch, args, env, expected) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert "INTERNALERROR" not in result.stderr.str() + result.stdout.str()


def test_bad_ini_value_names_the_ini_key(pytester, run) -> None:
    pytester.makeini("[pytest]\nconcurrency_workers = lots\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid ini option concurrency_workers = lots*"])


def test_precedence_marker_over_cli_over_env_over_ini(pytester, run, monkeypatch) -> None:
    pytester.makeini(
        "[pytest]\nconcurrency_workers = 2\nconcurrency_runs = 2\nconcurrency_mode = threads\n"
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(runs=3)
        def test_a(concurrency):
            pass
        """
    )
    monkeypatch.setenv("PYTEST_CONCURRENCY_WORKERS", "3")
    monkeypatch.setenv("PYTEST_CONCURRENCY_RUNS", "4")
    out = pytester.path / "report.json"
    run("--concurrency-workers=5", f"--concurrency-json={out}").assert_outcomes(passed=1)
    entry = json.loads(out.read_text())["tests"][0]
    assert (entry["workers"], entry["runs_done"]) == (5, 3)  # cli beats env; marker beats all
    monkeypatch.delenv("PYTEST_CONCURRENCY_WORKERS")
    run(f"--concurrency-json={out}").assert_outcomes(passed=1)
    assert json.loads(out.read_text())["tests"][0]["workers"] == 2  # ini when nothing else


def test_json_report_has_one_entry_per_concurrent_test(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=3, runs=4)
        def test_ok():
            pass

        @pytest.mark.concurrent(workers=2, runs=10, seed=99)
        def test_bad(concurrency):
            assert concurrency.run != 2

        def test_plain():
            pass
        """
    )
    out = pytester.path / "out" / "report.json"
    run(f"--concurrency-json={out}", "--concurrency-seed=7").assert_outcomes(passed=2, failed=1)
    document = json.loads(out.read_text())
    assert document["version"] == report.JSON_VERSION
    assert document["seed"] == 7
    assert {"python", "gil_enabled", "usable_cores"} <= set(document)
    tests = {entry["nodeid"]: entry for entry in document["tests"]}
    assert set(tests) == {
        "test_json_report_has_one_entry_per_concurrent_test.py::test_ok",
        "test_json_report_has_one_entry_per_concurrent_test.py::test_bad",
    }
    ok = tests["test_json_report_has_one_entry_per_concurrent_test.py::test_ok"]
    assert (ok["mode"], ok["workers"], ok["runs_done"], ok["outcome"]) == (
        "threads",
        3,
        4,
        "passed",
    )
    assert ok["failures"] == []
    bad = tests["test_json_report_has_one_entry_per_concurrent_test.py::test_bad"]
    assert (bad["seed"], bad["runs_done"], bad["failing_run"], bad["outcome"]) == (
        99,
        3,
        2,
        "failed",
    )
    assert bad["failures"][0]["exception"] == "AssertionError"
    assert bad["failures"][0]["count"] == 2
    assert "--concurrency-seed=99" in bad["reproduce"]


def test_terminal_summary_has_a_concurrency_section(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=2, runs=3)
        def test_bad(concurrency):
            assert concurrency.worker == 0
        """
    )
    result = run()
    result.stdout.fnmatch_lines(
        [
            "*= concurrency =*",
            "1 concurrent tests, 1 runs, 2 calls; 1 with failures",
            "*test_bad: failed in run 0 (threads, 2 workers)",
            "*AssertionError at test_terminal_summary_has_a_concurrency_section.py:5 x1",
            "*reproduce: pytest *",
        ]
    )


def test_no_section_and_no_change_when_nothing_is_concurrent(pytester, run) -> None:
    pytester.makepyfile("def test_plain(): pass")
    result = run()
    result.assert_outcomes(passed=1)
    assert "= concurrency =" not in result.stdout.str()


def test_hang_is_reported_with_the_stuck_stack_and_does_not_hang_pytest(
    pytester, run_subprocess
) -> None:
    pytester.makepyfile(
        """
        import threading
        import pytest

        NEVER = threading.Event()

        @pytest.mark.concurrent(workers=3, runs=5, timeout=0.5)
        def test_stuck(concurrency):
            if concurrency.worker == 1:
                NEVER.wait(600)  # far past the subprocess deadline: pytest must not wait
        """
    )
    result = run_subprocess(timeout=120)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*HANG in run 0 of 5 (3 threads, seed *): worker 1 did not finish within 0.5s",
            "*worker 1 is stuck here:*",
            "*NEVER.wait(600)*",
            "*abandoned hung threads: concurrency-worker-1*",
        ]
    )


def test_run_all_runs_every_test_concurrently_except_unsafe_ones(pytester, run) -> None:
    pytester.makepyfile(
        """
        import threading, warnings
        import pytest

        THREADS = {}

        def test_plain():
            THREADS.setdefault("plain", set()).add(threading.current_thread().name)

        @pytest.mark.not_concurrent(reason="talks to a global printer")
        def test_opted_out():
            THREADS.setdefault("opted_out", set()).add(threading.current_thread().name)

        def test_uses_monkeypatch(monkeypatch):
            THREADS.setdefault("monkeypatch", set()).add(threading.current_thread().name)

        def test_uses_warns():
            with pytest.warns(UserWarning):
                warnings.warn("w", UserWarning)

        def test_zz_check():
            pass
        """
    )
    pytester.makeconftest(
        """
        def pytest_sessionfinish(session):
            import test_run_all_runs_every_test_concurrently_except_unsafe_ones as mod
            assert len(mod.THREADS["plain"]) == 4, mod.THREADS
            assert mod.THREADS["opted_out"] == {"MainThread"}
            assert mod.THREADS["monkeypatch"] == {"MainThread"}
        """
    )
    out = pytester.path / "r.json"
    result = run("--concurrency-all", "--concurrency-runs=3", f"--concurrency-json={out}")
    result.assert_outcomes(passed=5)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*3 tests ran once, not concurrently:*",
            "*1 marked not_concurrent: talks to a global printer:*test_opted_out*",
            "*1 uses thread-unsafe fixture monkeypatch:*test_uses_monkeypatch*",
            "*1 uses warns (warning filters are process-global):*test_uses_warns*",
        ]
    )
    document = json.loads(out.read_text())
    assert len(document["tests"]) == 2
    assert {entry["reason"] for entry in document["serial"]} == {
        "marked not_concurrent: talks to a global printer",
        "uses thread-unsafe fixture monkeypatch",
        "uses warns (warning filters are process-global)",
    }


def test_unsafe_fixture_list_is_configurable(pytester, run) -> None:
    pytester.makeini("[pytest]\nconcurrency_unsafe_fixtures =\n    tmp_path\n")
    pytester.makepyfile(
        """
        def test_tmp(tmp_path):
            pass

        def test_mp(monkeypatch):
            pass
        """
    )
    result = run("--concurrency-all", "--concurrency-runs=2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*1 uses thread-unsafe fixture tmp_path:*test_tmp*"])


def test_seed_last_replays_the_previous_session_seed(pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    first = pytester.runpytest(
        "-p", "no:run-parallel", "-p", "no:asyncio", "--concurrency-seed=31337"
    )
    first.assert_outcomes(passed=1)
    again = pytester.runpytest(
        "-p", "no:run-parallel", "-p", "no:asyncio", "--concurrency-seed=last"
    )
    again.stdout.fnmatch_lines(["concurrency: seed 31337 *"])


def test_reproduce_line_is_relative_to_where_pytest_was_started(pytester, run) -> None:
    sub = pytester.mkdir("sub")
    (sub / "pytest.ini").write_text("[pytest]\n")
    (sub / "test_inner.py").write_text(
        "import pytest\n\n@pytest.mark.concurrent(workers=2, runs=2)\n"
        "def test_x():\n    assert False\n"
    )
    result = run("sub")
    result.stdout.fnmatch_lines(
        ["*rootdir: *sub*", "*reproduce: pytest sub/test_inner.py::test_x --concurrency-seed=*"]
    )
    line = next(x for x in result.stdout.lines if "reproduce: pytest" in x).split("pytest ", 1)[1]
    run(*line.split()).assert_outcomes(failed=1)
