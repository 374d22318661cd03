"""Acceptance: the explicit harness `for run in concurrency.runs(N): run(...)`."""

from __future__ import annotations

import json

import pytest

from pytest_concurrency import messages


def test_results_come_back_in_worker_order_and_actors_run_once_each(pytester, run) -> None:
    pytester.makepyfile(
        """
        def test_results(concurrency):
            for run in concurrency.runs(20):
                got = run(lambda: concurrency.worker * 10, workers=5)
                assert got == [0, 10, 20, 30, 40]
                a, b, c = run(lambda: "a", lambda: "b", lambda: concurrency.worker)
                assert (a, b, c) == ("a", "b", 2)
        """
    )
    run().assert_outcomes(passed=1)


def test_between_runs_code_is_single_threaded_and_runs_are_counted(pytester, run) -> None:
    pytester.makepyfile(
        """
        import threading

        def test_setup_and_check(concurrency):
            seen = []
            for run in concurrency.runs(7):
                assert not concurrency.in_run
                assert threading.current_thread() is threading.main_thread()
                box = []
                run(lambda: box.append(concurrency.run), workers=3)
                assert box == [run.index] * 3
                seen.append(run.index)
            assert seen == list(range(7))
        """
    )
    out = pytester.path / "r.json"
    run(f"--concurrency-json={out}").assert_outcomes(passed=1)
    entry = json.loads(out.read_text())["tests"][0]
    assert (entry["runs_done"], entry["calls"], entry["workers"]) == (7, 21, 3)


def test_worker_failure_stops_the_loop_and_names_run_and_seed(pytester, run) -> None:
    pytester.makepyfile(
        """
        LAST = []

        def test_fails_in_run_4(concurrency):
            for run in concurrency.runs(100):
                LAST.append(run.index)
                def body():
                    assert not (concurrency.run == 4 and concurrency.worker == 1), "boom"
                run(body, workers=2)

        def test_stopped():
            assert LAST == [0, 1, 2, 3, 4]
        """
    )
    result = run()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*RACE DETECTED in run 4 of 100 (2 threads, seed *): 1 of 10 calls failed",
            "*reproduce: pytest test_worker_failure_stops_the_loop_and_names_run_and_seed.py"
            "::test_fails_in_run_4 --concurrency-seed=*",
        ]
    )


def test_observations_are_printed_on_failure_and_kept_in_json(pytester, run) -> None:
    pytester.makepyfile(
        """
        def test_observe(concurrency):
            for run in concurrency.runs(10):
                run.observe("ok" if run.index < 5 else "torn")
                run(lambda: None, workers=2)
                assert run.index < 5
        """
    )
    out = pytester.path / "r.json"
    result = run(f"--concurrency-json={out}")
    result.stdout.fnmatch_lines(
        [
            "*FAILED after run 5 of 10 (2 threads, seed *): the check after the run failed",
            "*observed outcomes (value: count):",
            "*'ok': 5",
            "*'torn': 1",
        ]
    )
    entry = json.loads(out.read_text())["tests"][0]
    assert entry["observations"] == {"'ok'": 5, "'torn'": 1}
    assert entry["failing_run"] == 5 and entry["outcome"] == "failed"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("concurrency.barrier()", messages.BARRIER_OUTSIDE_RUN),
        ("concurrency.worker", messages.WORKER_OUTSIDE_RUN.format(name="worker")),
        (
            "[r(lambda: [x for x in concurrency.runs(2)], workers=2) for r in concurrency.runs(1)]",
            messages.NESTED_RUN,
        ),
        ("[r() for r in concurrency.runs(1)]", messages.RUN_NEEDS_CALLABLES),
        ("[r(len, len, workers=3) for r in concurrency.runs(1)]", messages.RUN_WORKERS_WITH_ACTORS),
        ("[r(len, workers=0) for r in concurrency.runs(1)]", "run(fn, workers=N) takes a whole"),
        ("list(concurrency.runs(0))", "runs() takes a whole number >= 1"),
        ("[r for r in concurrency.runs(1)][0](lambda: 1)", messages.RUN_AFTER_LOOP),
    ],
)
def test_misuse_is_a_clear_error(pytester, run, body: str, message: str) -> None:
    pytester.makepyfile(
        f"""
        def test_misuse(concurrency):
            {body}
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    assert message[:60] in result.stdout.str().replace("\n", " ")
    assert "INTERNALERROR" not in result.stdout.str()


def test_nested_marker_and_harness_is_a_clear_error(pytester, run) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrent(workers=2, runs=2)
        def test_nested(concurrency):
            for run in concurrency.runs(2):
                run(lambda: None)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    assert messages.NESTED_RUN[:50] in result.stdout.str()


def test_no_worker_thread_is_left_after_the_test(pytester, run) -> None:
    pytester.makepyfile(
        """
        import threading
        import pytest

        @pytest.mark.concurrent(workers=6, runs=5)
        def test_marked():
            pass

        def test_harness(concurrency):
            for run in concurrency.runs(5):
                run(lambda: None, workers=3)
                run(lambda: None, workers=5)  # another size: the pool is rebuilt

        def test_zz_none_left():
            names = [t.name for t in threading.enumerate() if t.name.startswith("concurrency-")]
            assert names == []
        """
    )
    run("--concurrency-leaks=fail").assert_outcomes(passed=3)
