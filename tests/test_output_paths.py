"""Acceptance: a bad --concurrency-json / --concurrency-plot path is a usage error at start-up,
naming the path and the fix; writing at the end never tracebacks, never leaves a temporary
file and never replaces a FIFO, a device or a directory (issue 14, case 6)."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine import outputs
from pytest_concurrency.errors import OutputPathError, SettingsError

SUITE = """
import pytest

@pytest.mark.concurrent(workers=2, runs=2)
def test_a():
    pass
"""

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and device nodes")


def refusal(where: str, problem: str) -> str:
    return "ERROR: " + messages.INVALID_SETTING.format(where=where, expected=problem)


def leftovers(root: Path) -> list[Path]:
    return sorted(root.rglob("*.tmp"))


def assert_refused(result: pytest.RunResult, line: str, root: Path) -> None:
    """Exit code 4, the one line on stderr, no traceback, nothing written."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert [text for text in result.stderr.lines if text.strip()] == [line], output
    assert "Traceback" not in output and "INTERNALERROR" not in output, output
    assert leftovers(root) == []


# -- refused at start-up -----------------------------------------------------------------


def test_a_json_path_under_a_regular_file_is_refused(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_suite=SUITE)
    notes = pytester.path / "notes.txt"
    notes.write_text("mine\n")
    result = run_subprocess(f"--concurrency-json={notes}/report.json")
    problem = messages.PATH_PARENT_NOT_A_DIRECTORY.format(path=notes, kind="a file")
    assert_refused(
        result, refusal(f"--concurrency-json={notes}/report.json", problem), notes.parent
    )
    assert notes.read_text() == "mine\n"


def test_a_json_path_that_is_a_directory_is_refused(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_suite=SUITE)
    folder = pytester.mkdir("reports")
    result = run_subprocess(f"--concurrency-json={folder}")
    problem = messages.PATH_NOT_A_FILE.format(path=folder, kind="a directory")
    assert_refused(result, refusal(f"--concurrency-json={folder}", problem), pytester.path)
    assert folder.is_dir() and list(folder.iterdir()) == []


@posix_only
def test_a_json_path_that_is_a_fifo_is_refused_and_left_alone(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_suite=SUITE)
    fifo = pytester.path / "report.json"
    os.mkfifo(fifo)
    result = run_subprocess(f"--concurrency-json={fifo}")
    problem = messages.PATH_NOT_A_FILE.format(path=fifo, kind="a FIFO")
    assert_refused(result, refusal(f"--concurrency-json={fifo}", problem), pytester.path)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.fixture
def device(pytester: pytest.Pytester) -> Path:
    """A character device: a null device of our own when we are root (so that even a broken
    plugin could only replace that one), else /dev/null, which a non-root run cannot replace."""
    if os.geteuid() != 0:
        return Path("/dev/null")
    node = pytester.path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as error:
        pytest.skip(f"root, but cannot make a device node here: {error}")
    return node


@posix_only
def test_a_device_json_path_is_refused_and_left_alone(pytester, run_subprocess, device) -> None:
    pytester.makepyfile(test_suite=SUITE)
    before = os.stat(device)
    result = run_subprocess(f"--concurrency-json={device}")
    problem = messages.PATH_NOT_A_FILE.format(path=device, kind="a device")
    assert_refused(result, refusal(f"--concurrency-json={device}", problem), pytester.path)
    after = os.stat(device)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert after.st_ino == before.st_ino


@posix_only
def test_dev_stdout_is_refused(pytester, run_subprocess) -> None:
    """Whatever stdout is (here a regular file, pytester's capture), it is not a report file."""
    pytester.makepyfile(test_suite=SUITE)
    result = run_subprocess("--concurrency-json=/dev/stdout")
    problem = messages.PATH_IS_STREAM.format(path="/dev/stdout")
    assert_refused(result, refusal("--concurrency-json=/dev/stdout", problem), pytester.path)


def test_a_plot_dir_that_is_a_regular_file_is_refused(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_suite=SUITE)
    charts = pytester.path / "charts"
    charts.write_text("mine\n")
    result = run_subprocess(f"--concurrency-plot={charts}")
    problem = messages.PATH_NOT_A_DIRECTORY.format(path=charts, kind="a file")
    assert_refused(result, refusal(f"--concurrency-plot={charts}", problem), pytester.path)
    assert charts.read_text() == "mine\n"


@pytest.mark.parametrize(
    ("variable", "kind", "message"),
    [
        ("PYTEST_CONCURRENCY_JSON", "a directory", messages.PATH_NOT_A_FILE),
        ("PYTEST_CONCURRENCY_PLOT", "a file", messages.PATH_NOT_A_DIRECTORY),
    ],
)
def test_the_environment_variable_is_named_as_the_source(
    pytester, run_subprocess, monkeypatch, variable: str, kind: str, message: str
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    target = pytester.mkdir("target") if kind == "a directory" else pytester.path / "target"
    if kind == "a file":
        target.write_text("mine\n")
    monkeypatch.setenv(variable, str(target))
    result = run_subprocess()
    problem = message.format(path=target, kind=kind)
    assert_refused(
        result, refusal(f"environment variable {variable}={target}", problem), pytester.path
    )


def test_the_xdist_controller_refuses_a_bad_path_once(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_suite=SUITE)
    notes = pytester.path / "notes.txt"
    notes.write_text("mine\n")
    result = run_subprocess("-n", "2", f"--concurrency-json={notes}/report.json")
    problem = messages.PATH_PARENT_NOT_A_DIRECTORY.format(path=notes, kind="a file")
    assert_refused(
        result, refusal(f"--concurrency-json={notes}/report.json", problem), notes.parent
    )


# -- good paths still work ----------------------------------------------------------------


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["plain", "xdist"])
def test_a_good_path_still_works_and_missing_directories_are_created(
    pytester, run_subprocess, xdist: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    path = pytester.path / "out" / "deep" / "report.json"
    old = pytester.path / "old.json"
    old.write_text("{}\n")
    result = run_subprocess(*xdist, f"--concurrency-json={path}")
    result.assert_outcomes(passed=1)
    assert [entry["nodeid"] for entry in json.loads(path.read_text())["tests"]] == [
        "test_suite.py::test_a"
    ]
    result.stdout.fnmatch_lines([f"JSON report: {path}"])
    assert leftovers(pytester.path) == []
    again = run_subprocess(*xdist, f"--concurrency-json={old}")  # an existing file is replaced
    again.assert_outcomes(passed=1)
    assert json.loads(old.read_text())["tests"]


# -- the write at the end fails anyway: one warning line, the outcome stands ---------------


def test_a_folder_replaced_by_a_file_during_the_run_gives_a_warning(
    pytester, run_subprocess
) -> None:
    folder = pytester.mkdir("out")
    pytester.makepyfile(
        test_suite=SUITE
        + f"""
import shutil

def test_replace_the_folder():
    shutil.rmtree({str(folder)!r})
    open({str(folder)!r}, "w").close()
"""
    )
    path = folder / "report.json"
    result = run_subprocess(f"--concurrency-json={path}")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    warning = messages.JSON_NOT_WRITTEN.format(path=path, error=f"File exists: {folder}")
    result.stdout.fnmatch_lines([warning])
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "JSON report:" not in output, output
    assert folder.is_file() and leftovers(pytester.path) == []


def test_a_full_disk_at_the_end_gives_a_warning_and_no_tmp_file(pytester, run_subprocess) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeconftest(
        """
        import errno
        import os

        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_sessionfinish():
            def disk_full(source, target):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(source))

            os.replace = disk_full
        """
    )
    path = pytester.path / "report.json"
    result = run_subprocess(f"--concurrency-json={path}")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    warning = messages.JSON_NOT_WRITTEN.format(path=path, error=os.strerror(errno.ENOSPC))
    result.stdout.fnmatch_lines([warning])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert not path.exists() and leftovers(pytester.path) == []


@posix_only
def test_a_fifo_made_during_the_run_is_left_alone(pytester, run_subprocess) -> None:
    path = pytester.path / "report.json"
    pytester.makepyfile(
        test_suite=SUITE
        + f"""
import os

def test_make_a_fifo():
    os.mkfifo({str(path)!r})
"""
    )
    result = run_subprocess(f"--concurrency-json={path}")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    left_alone = messages.PATH_LEFT_ALONE.format(path=path, kind="a FIFO")
    result.stdout.fnmatch_lines([messages.JSON_NOT_WRITTEN.format(path=path, error=left_alone)])
    assert stat.S_ISFIFO(os.stat(path).st_mode) and leftovers(pytester.path) == []


# -- the pure helper -----------------------------------------------------------------------


def test_an_unwritable_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)
    problem = messages.PATH_NOT_WRITABLE.format(path=tmp_path)
    assert outputs.json_path_problem(tmp_path / "report.json") == problem
    assert outputs.plot_dir_problem(tmp_path / "charts" / "new") == problem


def test_the_source_is_named_and_a_good_path_passes(tmp_path: Path) -> None:
    good = {"PYTEST_CONCURRENCY_JSON": str(tmp_path / "r.json")}
    outputs.check_output_paths(cli={}, env=good, ini={})
    with pytest.raises(SettingsError, match=r"^pytest-concurrency: invalid --concurrency-plot="):
        outputs.check_output_paths(cli={"concurrency_plot": __file__}, env={}, ini={})


@posix_only
def test_writing_leaves_a_fifo_alone_and_no_tmp_file(tmp_path: Path) -> None:
    fifo = tmp_path / "index.html"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError, match="is a FIFO, not a file, and was left alone"):
        outputs.write_atomically(fifo, b"<html>")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and leftovers(tmp_path) == []


def test_a_failed_rename_removes_the_tmp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(source: object, target: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(source))

    monkeypatch.setattr(outputs.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        outputs.write_atomically(tmp_path / "report.json", b"{}")
    assert list(tmp_path.iterdir()) == []
