"""The session's output files: the JSON report's path and the charts' folder.

Checked at start-up (:func:`check_output_paths`: a bad path is a :class:`SettingsError` naming
where it came from and the fix, which the plugin turns into a usage error), and written at the
end through :func:`write_atomically`, which goes through a temporary file beside the target and
never replaces anything but a regular file: a FIFO, a device, a socket or a directory at the
path is left as it was. Missing directories on the way are created when the file is written.

Pure module: no pytest import.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from pytest_concurrency import messages
from pytest_concurrency.engine.settings import SESSION_FIELDS, Source, first_given
from pytest_concurrency.errors import OutputPathError, SettingsError

REGULAR = "a file"
KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISREG, REGULAR),
)
STREAM_FILES = frozenset({"/dev/stdin", "/dev/stdout", "/dev/stderr"})
STREAM_FOLDERS = ("/dev/fd/", "/proc/")
"""Names of this process's own streams: a regular file behind one (``> out.txt``) is the
terminal output, not a report file."""


def kind_of(path: Path) -> str | None:
    """What is at ``path``, symbolic links followed: ``"a file"``, ``"a directory"``,
    ``"a FIFO"``, ...; None when nothing is there. Other errors (no permission to look, a
    symbolic link loop) are raised as :class:`OSError`."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    return next((kind for test, kind in KINDS if test(mode)), "a special file")


def is_stream(path: Path) -> bool:
    text = os.path.abspath(path)
    return text in STREAM_FILES or text.startswith(STREAM_FOLDERS)


def describe_error(error: OSError, target: Path | None = None) -> str:
    """An OS error in a few words, ``No space left on device``, with the file it names when
    that is not ``target`` itself or our temporary file: ``File exists: /out/charts``."""
    if not error.strerror:
        return str(error)
    name = os.fsdecode(error.filename) if isinstance(error.filename, (str, bytes)) else None
    if name is None or name.endswith(".tmp") or (target is not None and Path(name) == target):
        return error.strerror
    return f"{error.strerror}: {name}"


def json_path_problem(path: Path) -> str | None:
    """Why the JSON report cannot be written to ``path``; None when it can."""
    try:
        if is_stream(path):
            return messages.PATH_IS_STREAM.format(path=path)
        kind = kind_of(path)
        if kind is not None and kind != REGULAR:
            return messages.PATH_NOT_A_FILE.format(path=path, kind=kind)
        return folder_problem(Path(os.path.realpath(path)).parent)
    except OSError as error:
        return messages.PATH_UNCHECKABLE.format(path=path, error=describe_error(error, path))


def plot_dir_problem(path: Path) -> str | None:
    """Why the charts cannot be written to the folder ``path``; None when they can."""
    try:
        kind = kind_of(path)
        if kind is not None and kind != "a directory":
            return messages.PATH_NOT_A_DIRECTORY.format(path=path, kind=kind)
        return folder_problem(Path(os.path.realpath(path)))
    except OSError as error:
        return messages.PATH_UNCHECKABLE.format(path=path, error=describe_error(error, path))


def folder_problem(folder: Path) -> str | None:
    """``folder`` exists as a writable directory, or its nearest existing ancestor is one
    (the missing ones are created at the end)."""
    for candidate in (folder, *folder.parents):
        kind = kind_of(candidate)
        if kind is None:
            continue
        if kind != "a directory":
            return messages.PATH_PARENT_NOT_A_DIRECTORY.format(path=candidate, kind=kind)
        if not os.access(candidate, os.W_OK | os.X_OK):
            return messages.PATH_NOT_WRITABLE.format(path=candidate)
        return None
    return None  # nothing exists, not even the root: let the write say what is wrong


PROBLEMS = {"json_path": json_path_problem, "plot_dir": plot_dir_problem}


def check_output_paths(
    *,
    cli: Mapping[str, object | None],
    env: Mapping[str, str],
    ini: Mapping[str, object | None],
) -> None:
    """Raise :class:`SettingsError` naming the source when the JSON path or the charts'
    folder, from whichever source gives it, cannot be written."""
    for name, problem_of in PROBLEMS.items():
        given = first_given(SESSION_FIELDS[name], cli=cli, env=env, ini=ini)
        if given is None:
            continue
        raw, source = given
        problem = problem_of(Path(str(raw).strip()))
        if problem is not None:
            raise refused(source, raw, problem)


def refused(source: Source, raw: object, problem: str) -> SettingsError:
    return SettingsError(
        messages.INVALID_SETTING.format(where=source.describe(raw), expected=problem)
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``PATH.PID.tmp`` beside it, then rename it onto
    ``path``: a reader never sees half a file. Anything at ``path`` that is not a regular file
    is left alone (:class:`OutputPathError`); the temporary file never outlives the call."""
    refuse_special(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    renamed = False
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        refuse_special(path)  # again: something may have appeared while we wrote
        os.replace(tmp, path)
        renamed = True
    finally:
        if not renamed:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def refuse_special(path: Path) -> None:
    kind = kind_of(path)
    if kind is not None and kind != REGULAR:
        raise OutputPathError(messages.PATH_LEFT_ALONE.format(path=path, kind=kind))
