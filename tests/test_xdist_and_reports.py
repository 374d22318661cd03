"""Acceptance: pytest-xdist merging, sharded hunts, JUnit properties, oversubscription."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from pytest_concurrency.engine import report

SUITE = """
import pytest

@pytest.mark.concurrent(workers=2, runs=5)
def test_a(concurrency):
    pass

@pytest.mark.concurrent(workers=3, runs=6)
def test_b(concurrency):
    assert concurrency.run != 4

@pytest.mark.parametrize("i", range(4))
@pytest.mark.concurrent(workers=2, runs=2)
def test_c(i):
    pass

def test_harness(concurrency):
    for run in concurrency.runs(3):
        run(lambda: None, workers=2)
"""


def seeds_by_test(path) -> dict[str, int]:
    return {entry["nodeid"]: entry["seed"] for entry in json.loads(path.read_text())["tests"]}


def test_xdist_merges_every_test_into_one_json_and_summary(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_suite=SUITE)
    merged = pytester.path / "merged.json"
    result = run_subprocess("-n", "2", "--concurrency-seed=77", f"--concurrency-json={merged}")
    result.assert_outcomes(passed=6, failed=1)
    assert result.ret == 1
    document = json.loads(merged.read_text())
    assert document["seed"] == 77
    assert len(document["tests"]) == 7
    assert {entry["outcome"] for entry in document["tests"]} == {"passed", "failed"}
    assert document["oversubscription"]["xdist_workers"] == 2
    text = result.stdout.str()
    assert text.count("concurrency: seed 77") == 1  # the header is printed once
    result.stdout.fnmatch_lines(
        [
            "concurrency: pytest-xdist -n 2: up to 2 x 4 = 8 busy workers*",
            "*= concurrency =*",
            "7 concurrent tests, *; 1 with failures",
            "pytest-xdist -n 2: up to 2 x 4 = 8 busy workers*",
        ]
    )
    # Every worker used the controller's seed: the same per-test seeds as a plain run.
    plain = pytester.path / "plain.json"
    run_subprocess("--concurrency-seed=77", f"--concurrency-json={plain}")
    assert seeds_by_test(plain) == seeds_by_test(merged)


def test_shards_split_one_hunt_into_items_and_the_failing_shard_replays(
    pytester, run_subprocess
) -> None:
    pytester.makepyfile(
        test_rare="""
        import pytest

        @pytest.mark.concurrent(workers=2, runs=400)
        def test_rare(concurrency):
            assert concurrency.run_seed % 53 != 0
        """
    )
    out = pytester.path / "r.json"
    result = run_subprocess(
        "-n", "2", "--concurrency-shards=4", "--concurrency-seed=5", f"--concurrency-json={out}"
    )
    entries = json.loads(out.read_text())["tests"]
    assert sorted(entry["shard"] for entry in entries) == [0, 1, 2, 3]
    assert {entry["base_nodeid"] for entry in entries} == {"test_rare.py::test_rare"}
    assert len({entry["seed"] for entry in entries}) == 4  # disjoint seed streams
    assert all(entry["runs_planned"] == 100 for entry in entries)
    failed = [entry for entry in entries if entry["failing_run"] is not None]
    assert failed, "a 1-in-53 failure over 400 runs"
    result.stdout.fnmatch_lines(
        ["sharded test_rare.py::test_rare: 4 of 4 shards, * runs; failed in shard *"]
    )
    replay = failed[0]["reproduce"].split(" ", 1)[1]
    args = [arg.strip("'") for arg in replay.split()]
    again = run_subprocess(*args)
    again.assert_outcomes(failed=1)
    assert re.search(rf"in run {failed[0]['failing_run']} of 100", again.stdout.str())


def junit_properties(xml) -> dict[str, dict[str, str]]:
    return {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ET.parse(xml).getroot().iter("testcase")
    }


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_junit_xml_carries_concurrency_properties(pytester, run_subprocess, xdist) -> None:
    pytester.makepyfile(SUITE)
    xml = pytester.path / "junit.xml"
    run_subprocess(*(("-n", "2") if xdist else ()), f"--junitxml={xml}")
    cases = junit_properties(xml)
    assert cases["test_b"] == {
        "concurrency_mode": "threads",
        "concurrency_workers": "3",
        "concurrency_runs": "5",
        "concurrency_seed": cases["test_b"]["concurrency_seed"],
        "concurrency_failures": "3",
        "concurrency_verdict": report.VERDICT_RACE,
    }
    assert cases["test_b"]["concurrency_seed"].isdigit()
    assert cases["test_a"]["concurrency_verdict"] == report.VERDICT_CLEAN
    assert cases["test_a"]["concurrency_runs"] == "5"
    assert cases["test_harness"]["concurrency_runs"] == "3"  # the harness too
    assert cases["test_harness"]["concurrency_verdict"] == report.VERDICT_CLEAN
    assert len([name for name in cases if name.startswith("test_c")]) == 4
    assert all(
        cases[name]["concurrency_workers"] == "2" for name in cases if name.startswith("test_c")
    )


def test_junit_verdicts_for_a_failed_check_a_hang_and_a_scaling_entry() -> None:
    base = {
        "kind": report.KIND_CONCURRENT,
        "mode": "threads",
        "workers": 2,
        "runs_done": 4,
        "seed": 9,
        "failures": [],
        "hung_workers": [],
        "failing_run": None,
    }
    assert report.concurrent_verdict(base) == report.VERDICT_CLEAN
    assert report.concurrent_verdict({**base, "failing_run": 3}) == report.VERDICT_CHECK_FAILED
    assert report.concurrent_verdict({**base, "failing_run": 3, "hung_workers": [1]}) == (
        report.VERDICT_HUNG
    )
    sharded = dict(report.junit_properties({**base, "shard": 1, "shards": 4}))
    assert sharded["concurrency_shard"] == "1 of 4"
    scaling = dict(
        report.junit_properties(
            {
                "kind": report.KIND_SCALING,
                "verdict": "gil-bound",
                "seed": 5,
                "judged_workers": {"threads": 2, "processes": 2},
                "levels": [{"rounds": 3}, {"rounds": 4}],
            }
        )
    )
    assert scaling == {
        "concurrency_mode": "threads,processes",
        "concurrency_workers": 2,
        "concurrency_runs": 7,
        "concurrency_seed": 5,
        "concurrency_failures": 0,
        "concurrency_verdict": "gil-bound",
    }
    assert report.junit_properties({"kind": report.KIND_SERIAL}) == []


def test_shards_option_is_validated(pytester, run) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run("--concurrency-shards=0")
    result.stderr.fnmatch_lines(["*invalid --concurrency-shards=0*"])
