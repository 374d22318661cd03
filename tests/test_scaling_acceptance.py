"""Acceptance: the ``scaling`` fixture and marker, their skips, the summary, JSON and charts.

Each inner measurement is kept small (``rounds=3`` and a budget of a second or two), so the
verdicts here are whatever this machine gives: the tests check structure and wiring, never
speed. Verdict accuracy is measured by ``benchmarks/scaling/run_labelled.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ISOLATION_ARGS

from pytest_concurrency.scaling import messages as scaling_messages
from pytest_concurrency.scaling import plot
from pytest_concurrency.scaling.verdict import IO_BOUND, SCALES, VERDICTS

pytestmark = pytest.mark.slow  # pytest runs in subprocesses here
VERDICT_PATTERN = "|".join(VERDICTS)
NOT_UNDER_GIL = (SCALES, IO_BOUND)

UNITS = """
import sys
import pytest
from pytest_concurrency.plugin.scaling_hooks import active_tracer

# Under coverage (the suite's coverage run traces these inner sessions too) measure anyway.
FORCE = active_tracer() is not None

def work():
    return sum(i * i for i in range(3000))
"""


MEASURED = (
    UNITS
    + """
def test_fixture(scaling):
    report = scaling(work, workers=2, rounds=3, budget=1, force=FORCE)
    if report.gil_enabled:
        # Pure-Python work on threads holding the GIL can neither scale nor look I/O-bound.
        assert report.verdict not in NOT_UNDER_GIL, report.summary()
    assert report.speedup("threads", 1) == 1.0
    assert report.speedup("processes", 2) > 0
    assert 0 < report.efficiency("threads", 2)
    assert report.summary().startswith("scaling of work: " + report.verdict)

@pytest.fixture
def size():
    return 3000

@pytest.mark.scaling(workers=2, modes=("processes",), rounds=3, budget=1, force=FORCE)
def test_marker(size):
    sum(i * i for i in range(size))
"""
)


@dataclass(frozen=True)
class InnerRun:
    path: Path
    returncode: int
    stdout: pytest.LineMatcher


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> InnerRun:
    """One inner session, shared by the tests below: the fixture (both modes) and the marker
    (processes, with a fixture value), writing the JSON report and the charts."""
    path = tmp_path_factory.mktemp("measured")
    source = MEASURED.replace("NOT_UNDER_GIL", repr(NOT_UNDER_GIL))
    (path / "test_measured.py").write_text(textwrap.dedent(source))
    command = [
        sys.executable,
        "-m",
        "pytest",
        *ISOLATION_ARGS,
        "-p",
        "no:randomly",
        "-rA",
        "--concurrency-json=report.json",
        "--concurrency-plot=charts",
    ]
    done = subprocess.run(
        command, cwd=path, capture_output=True, text=True, timeout=180, check=False
    )
    return InnerRun(path, done.returncode, pytest.LineMatcher(done.stdout.splitlines()))


def test_fixture_and_marker_give_verdicts_in_the_summary_table(measured: InnerRun) -> None:
    measured.stdout.fnmatch_lines(["*2 passed*"])
    assert measured.returncode == 0
    measured.stdout.fnmatch_lines(
        [
            "*concurrency*",
            "test*verdict*threads*processes*cores*GIL*",
            "test_measured.py::test_*",
        ]
    )
    measured.stdout.re_match_lines([rf"test_measured.py::test_marker: ({VERDICT_PATTERN}): .+"])


def test_json_entries_have_the_documented_fields(measured: InnerRun) -> None:
    document = json.loads((measured.path / "report.json").read_text())
    entries = {entry["nodeid"]: entry for entry in document["scaling"]}
    assert set(entries) == {"test_measured.py::test_fixture", "test_measured.py::test_marker"}
    entry = entries["test_measured.py::test_fixture"]
    assert entry["kind"] == "scaling"
    # The JSON tells the verdict the summary printed.
    marker = entries["test_measured.py::test_marker"]
    measured.stdout.fnmatch_lines([f"test_measured.py::test_marker: {marker['verdict']}: *"])
    if entry["gil_enabled"]:
        assert entry["verdict"] not in NOT_UNDER_GIL
    assert entry["reasons"]
    assert isinstance(entry["gil_enabled"], bool)
    assert entry["usable_cores"] >= 1
    assert entry["usl"] is None
    levels = {(level["mode"], level["workers"]): level for level in entry["levels"]}
    assert {("threads", 1), ("threads", 2), ("processes", 1), ("processes", 2)} <= set(levels)
    two = levels[("processes", 2)]
    assert len(two["wall_s"]) == 3 and len(two["cpu_s"]) == 3 and len(two["cpu_s"][0]) == 2
    assert set(two["speedup"]) == {"median", "low", "high", "coverage"}
    assert "efficiency" in two and "serial_fraction" in two
    marker_modes = {level["mode"] for level in entries["test_measured.py::test_marker"]["levels"]}
    assert marker_modes == {"processes"}


def test_plot_directory_gets_a_png_per_test_and_an_index(measured: InnerRun) -> None:
    charts = measured.path / "charts"
    pngs = sorted(charts.glob("*.png"))
    assert len(pngs) == 2
    index = (charts / plot.INDEX_NAME).read_text()
    assert all(png.name in index for png in pngs)
    measured.stdout.fnmatch_lines(["*scaling charts: 2 written to*"])


def test_marker_failures_show_the_table_or_name_the_fix(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(
        """
        import threading
        import time

        import pytest
        from pytest_concurrency.plugin.scaling_hooks import active_tracer

        FORCE = active_tracer() is not None

        @pytest.mark.scaling(
            expect="io-bound", workers=2, modes="threads", rounds=3, budget=1, force=FORCE
        )
        def test_cpu_loop():
            sum(i * i for i in range(3000))

        LOCK = threading.Lock()

        @pytest.mark.scaling(
            min_efficiency=0.9, workers=2, modes="threads", rounds=3, budget=1, force=FORCE
        )
        def test_one_at_a_time():
            with LOCK:
                time.sleep(0.002)

        @pytest.mark.scaling(expect="fast")
        def test_unknown_word():
            pass

        @pytest.mark.scaling(worker=2)
        def test_unknown_key():
            pass

        @pytest.mark.scaling(2)
        def test_positional():
            pass

        @pytest.mark.scaling(modes=("processes",), rounds=3, budget=1, force=FORCE)
        def test_unpicklable_fixture(request):
            pass
        """
    )
    result = run_subprocess()
    result.assert_outcomes(failed=6)
    result.stdout.fnmatch_lines(
        [
            "*scaling: expected io-bound, got *",
            "*scaling of test_cpu_loop: *",
            "*mode*workers*speedup*interval*efficiency*",
            "*threads*1*x1.00*",
            "*reasons:*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*scaling: efficiency *% with 2 threads (interval *) is below min_efficiency=90%*",
            "*scaling of test_one_at_a_time: *",
            "*mode*workers*speedup*interval*efficiency*",
            "*reasons:*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*expect='fast' is not a verdict; use one of scales, gil-bound*",
            "*unknown argument 'worker'; use workers, modes*",
            "*takes keyword arguments only, such as @pytest.mark.scaling(expect='scales'); got *(2,)*",
            "*define the function at module level*fixture values*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_under_a_tracer_skipped_with_the_reason_or_forced_with_a_warning(
    pytester: pytest.Pytester, run_subprocess
) -> None:
    pytester.makepyfile(
        UNITS
        + """
def tracer(frame, event, arg):
    return None

def test_traced(scaling):
    sys.settrace(tracer)
    try:
        scaling(work, workers=2, rounds=3, budget=1)
    finally:
        sys.settrace(None)

def test_forced(scaling):
    sys.settrace(tracer)
    try:
        scaling(work, workers=2, modes="threads", rounds=3, budget=1, force=True)
    finally:
        sys.settrace(None)
"""
    )
    result = run_subprocess("-rs", "--concurrency-json=out.json")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*scaling: measurements are unreliable under a tracer*"])
    (entry,) = json.loads((pytester.path / "out.json").read_text())["scaling"]
    assert entry["nodeid"].endswith("::test_forced")
    assert entry["warnings"][0].startswith("measured under a tracer")
    assert any(reason.startswith("warning: measured under a tracer") for reason in entry["reasons"])


def test_skipped_under_xdist_with_the_reason(pytester: pytest.Pytester, run_subprocess) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.scaling(workers=2, rounds=3, budget=1)
        def test_under_xdist():
            pass
        """
    )
    result = run_subprocess("-n", "1", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"*{scaling_messages.SCALING_SKIP_XDIST[:60]}*"])
