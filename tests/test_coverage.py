"""Acceptance: coverage counts the lines concurrent bodies run, in threads and in child
processes, under pytest-cov with pytest-xdist and under ``coverage run``, with no configuration
by the user; and one ``-n 2 --cov --concurrency-json`` run holds every test of every mode."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("pytest_cov")
pytest.importorskip("xdist")

# Each module's body runs only where its name says: a line counted proves that the coverage
# of that place (a process-mode child, a thread-mode worker) reached the data.
ONLY_IN_CHILDREN = """
import os


def child_work(n):
    pid = os.getpid()
    total = 0
    for i in range(n):
        total += i
    return pid, total
"""
ONLY_IN_THREADS = """
def thread_work(n):
    doubled = n * 2
    return doubled + 1
"""
ONLY_IN_TASKS = """
import asyncio


async def task_work(n):
    await asyncio.sleep(0)
    tripled = n * 3
    return tripled
"""
SUITE = """
import multiprocessing

import pytest

from only_in_children import child_work
from only_in_tasks import task_work
from only_in_threads import thread_work

@pytest.mark.concurrent(mode="processes", workers=2, runs=3)
def test_processes():
    pid, total = child_work(5)
    assert multiprocessing.parent_process() is not None and total == 10


@pytest.mark.concurrent(workers=2, runs=3)
def test_threads():
    assert thread_work(1) == 3


@pytest.mark.concurrent(mode="asyncio", workers=3, runs=3)
async def test_asyncio():
    assert await task_work(2) == 6


def test_harness(concurrency):
    for run in concurrency.runs(3):
        assert run(lambda: thread_work(1), workers=2) == [3, 3]


@pytest.mark.scaling(force=True, rounds=3, budget=3)
def test_scaling():
    sum(range(2000))


@pytest.mark.concurrent(workers=2, runs=5)
def test_fails(concurrency):
    assert concurrency.run != 2


def test_plain():
    pass
"""
CONCURRENT = {"test_processes", "test_threads", "test_asyncio", "test_harness", "test_fails"}


def body_lines(source: str) -> set[int]:
    """The indented lines of a module as pytester writes it (leading blank lines dropped)."""
    lines = source.strip("\n").splitlines()
    return {number for number, line in enumerate(lines, 1) if line.startswith("    ")}


BODIES = {
    "only_in_children.py": body_lines(ONLY_IN_CHILDREN),
    "only_in_threads.py": body_lines(ONLY_IN_THREADS),
    "only_in_tasks.py": body_lines(ONLY_IN_TASKS),
}


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name in (
        "COVERAGE_RCFILE",
        "COVERAGE_FILE",
        "COVERAGE_PROCESS_START",
        "COVERAGE_PROCESS_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)  # the inner runs measure as a user's would
    pytester.makepyfile(
        only_in_children=ONLY_IN_CHILDREN,
        only_in_threads=ONLY_IN_THREADS,
        only_in_tasks=ONLY_IN_TASKS,
        test_suite=SUITE,
    )
    pytester.syspathinsert()
    return pytester


def executed_lines(path) -> dict[str, list[int]]:
    files = json.loads(path.read_text())["files"]
    return {name: data["executed_lines"] for name, data in files.items()}


def test_one_xdist_cov_json_run_has_every_mode_and_counts_child_lines(
    project, run_subprocess
) -> None:
    report = project.path / "concurrency.json"
    result = run_subprocess(
        "-n",
        "2",
        "--cov=.",
        "--cov-report=json:cov.json",
        "--concurrency-seed=3",
        f"--concurrency-json={report}",
        timeout=300,
    )
    result.assert_outcomes(passed=6, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    document = json.loads(report.read_text())
    tests = {entry["nodeid"].split("::")[1]: entry for entry in document["tests"]}
    assert set(tests) == CONCURRENT
    assert {tests[name]["mode"] for name in tests} == {"processes", "threads", "asyncio"}
    assert tests["test_fails"]["outcome"] == "failed"
    assert all(tests[name]["outcome"] == "passed" for name in CONCURRENT - {"test_fails"})
    assert [entry["nodeid"] for entry in document["scaling"]] == ["test_suite.py::test_scaling"]
    assert document["oversubscription"]["xdist_workers"] == 2
    lines = executed_lines(project.path / "cov.json")
    for module, body in BODIES.items():
        assert body <= set(lines[module]), (module, lines[module])
    assert not list(project.path.glob(".coverage.*")), "data files left uncombined"


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_coverage_run_counts_child_and_thread_lines_with_no_combine(
    project, start_method, monkeypatch
) -> None:
    """``coverage run -m pytest`` then ``coverage json``: no config file, no combine step."""
    project.makefile(".cfg", setup="[tool:pytest]\n")  # the rootdir, so no outer config
    monkeypatch.setenv("PYTEST_CONCURRENCY_START_METHOD", start_method)
    result = project.run(
        sys.executable,
        "-m",
        "coverage",
        "run",
        "--source=.",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:asyncio",
        "-p",
        "no:run-parallel",
        "-p",
        "no:xdist",
        "-k",
        "not scaling",
        timeout=300,
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*1 failed, 5 passed, 1 deselected*"])
    assert [path.name for path in project.path.glob(".coverage*")] == [".coverage"]
    project.run(sys.executable, "-m", "coverage", "json", "-o", "cov.json")
    lines = executed_lines(project.path / "cov.json")
    for module, body in BODIES.items():
        assert body <= set(lines[module]), (module, lines[module])


class FakeConfig:
    data_file = ".coverage"
    config_file = "/project/.coveragerc"
    source = ["pkg", "src"]  # a package's name, a directory (relative: made absolute)
    branch = True


class FakeCoverage:
    started: object = None

    def __init__(self, config: object) -> None:
        self.config = config

    @classmethod
    def current(cls) -> object:
        return cls.started


def test_parent_spec_falls_back_to_the_options_an_older_coverage_can_take(
    monkeypatch, tmp_path
) -> None:
    from types import SimpleNamespace

    from pytest_concurrency.runners import child_coverage

    monkeypatch.setitem(sys.modules, "coverage", SimpleNamespace(Coverage=FakeCoverage))
    monkeypatch.setattr(FakeCoverage, "started", None)
    assert child_coverage.parent_spec() is None  # not measured: the children are not either
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    monkeypatch.setattr(FakeCoverage, "started", FakeCoverage(FakeConfig()))
    assert child_coverage.parent_spec() == {
        "data_file": str(tmp_path / ".coverage"),
        "suffix": child_coverage.SUFFIX_PREFIX,
        "config_file": "/project/.coveragerc",
        "source": ["pkg", str(tmp_path / "src")],
        "branch": True,
    }


def test_a_child_that_cannot_start_coverage_says_so_and_runs_on(capsys) -> None:
    from pytest_concurrency.runners import child_coverage

    assert child_coverage.start(None) is None
    assert child_coverage.start({"suffix": "x", "no_such_option": 1}) is None
    assert "coverage not started in this worker" in capsys.readouterr().err
    child_coverage.stop(None)


STARTUP = """
import sys

from pytest_concurrency.runners import child_coverage


def child_entry():
    first = 1  # the target's first line: measured only if coverage started before this frame
    return first


if __name__ == "__main__":
    spec = {"data_file": sys.argv[1], "suffix": "startup", "config_file": False,
            "source": [sys.argv[2]]}
    child_coverage.run_measured(spec, child_entry)
"""


def test_run_measured_counts_the_target_from_its_first_line(tmp_path) -> None:
    """A child's entry point runs in a frame that starts after the measurement: its start-up
    lines count (a tracer started inside a function never sees the rest of that function)."""
    import os
    import subprocess

    from coverage import CoverageData

    script = tmp_path / "startup.py"
    script.write_text(STARTUP)
    # measured by this test only, not by the suite's own coverage run (if any)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / ".coverage"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (data_file,) = tmp_path.glob(".coverage.startup.*")
    data = CoverageData(basename=str(data_file))
    data.read()
    first = (
        STARTUP.splitlines().index(
            "    first = 1  # the target's first line: measured "
            "only if coverage started before this frame"
        )
        + 1
    )
    assert first in (data.lines(str(script)) or [])
