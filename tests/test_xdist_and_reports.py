"""Acceptance: pytest-xdist merging, sharded hunts, JUnit properties, oversubscription."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

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
    result.stdout.fnmatch_lines(["concurrency: pytest-xdist -n 2: up to 2 x 4 = 8 busy workers*",
                                 "*= concurrency =*", "7 concurrent tests, *; 1 with failures",
                                 "pytest-xdist -n 2: up to 2 x 4 = 8 busy workers*"])
    # Every worker used the controller's seed: the same per-test seeds as a plain run.
    plain = pytester.path / "plain.json"
    run_subprocess("--concurrency-seed=77", f"--concurrency-json={plain}")
    assert seeds_by_test(plain) == seeds_by_test(merged)


def test_shards_split_one_hunt_into_items_and_the_failing_shard_replays(pytester,
                                                                        run_subprocess) -> None:
    pytester.makepyfile(
        test_rare="""
        import pytest

        @pytest.mark.concurrent(workers=2, runs=400)
        def test_rare(concurrency):
            assert concurrency.run_seed % 53 != 0
        """
    )
    out = pytester.path / "r.json"
    result = run_subprocess("-n", "2", "--concurrency-shards=4", "--concurrency-seed=5",
                            f"--concurrency-json={out}")
    entries = json.loads(out.read_text())["tests"]
    assert sorted(entry["shard"] for entry in entries) == [0, 1, 2, 3]
    assert {entry["base_nodeid"] for entry in entries} == {"test_rare.py::test_rare"}
    assert len({entry["seed"] for entry in entries}) == 4  # disjoint seed streams
    assert all(entry["runs_planned"] == 100 for entry in entries)
    failed = [entry for entry in entries if entry["failing_run"] is not None]
    assert failed, "a 1-in-53 failure over 400 runs"
    result.stdout.fnmatch_lines(["sharded test_rare.py::test_rare: 4 of 4 shards, * runs; "
                                 "failed in shard *"])
    replay = failed[0]["reproduce"].split(" ", 1)[1]
    args = [arg.strip("'") for arg in replay.split()]
    again = run_subprocess(*args)
    again.assert_outcomes(failed=1)
    assert re.search(rf"in run {failed[0]['failing_run']} of 100", again.stdout.str())


def test_junit_xml_carries_concurrency_properties(pytester, run) -> None:
    pytester.makepyfile(SUITE)
    xml = pytester.path / "junit.xml"
    run(f"--junitxml={xml}")
    cases = {case.get("name"): case for case in ET.parse(xml).getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_b"].iter("property")}
    assert props["concurrency_mode"] == "threads"
    assert props["concurrency_workers"] == "3"
    assert props["concurrency_runs"] == "5"
    assert props["concurrency_failures"] == "3"
    assert props["concurrency_seed"].isdigit()


def test_shards_option_is_validated(pytester, run) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run("--concurrency-shards=0")
    result.stderr.fnmatch_lines(["*invalid --concurrency-shards=0*"])
