"""Coverage inside process-mode children, with no configuration by the user.

When the parent is measured by coverage.py (``coverage run -m pytest``, pytest-cov's ``--cov``,
under pytest-xdist or not), the lines a process-mode body runs in a child must count. Coverage's
own help does not reach these children: ``patch = ["subprocess"]`` starts coverage in new
interpreters only, the fork server that starts our children may predate the measurement, and
``concurrency = ["multiprocessing"]`` (which the user would have to configure) does not follow
``forkserver`` children. So:

* the parent hands each child a :func:`parent_spec`: its configuration, serialized, and the
  data file it writes;
* the child :func:`start`\\ s a :class:`coverage.Coverage` from it, writing to a file of its own
  beside the parent's, and :func:`stop` saves it when the child stops;
* the parent, once the children are reaped, merges their files into its own data and removes
  them (:func:`merge_children`): ``coverage report`` after ``coverage run -m pytest`` shows the
  children's lines with no ``coverage combine``, and pytest-cov finds nothing left to combine.
  A file that cannot be merged is left for ``coverage combine``.

A child that is killed (a crash, a hang) saves nothing. Nothing here imports pytest, and
coverage only when the parent is measured.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Callable, Iterable
from typing import Any

CONFIG_DATA_PREFIX = ":data:"
"""coverage.py reads a ``config_file`` that starts with this as serialized configuration."""
SUFFIX_PREFIX = f"pytest-concurrency.{secrets.token_hex(4)}"
"""A child's data file is the parent's plus ``.<this>.<child pid>`` (this: the parent's)."""

CoverageSpec = dict[str, Any]


def current_coverage() -> Any:
    """The started :class:`coverage.Coverage` of this process, or None."""
    coverage = sys.modules.get("coverage")
    current_of = getattr(getattr(coverage, "Coverage", None), "current", None)
    return current_of() if current_of is not None else None


def parent_data_file(current: Any) -> str:
    """The file ``current`` writes, resolved where it started (pytest may have moved since)."""
    data = getattr(current, "_data", None)
    if data is not None and hasattr(data, "base_filename"):
        return str(os.fspath(data.base_filename()))
    return str(os.path.abspath(current.config.data_file))


def parent_spec() -> CoverageSpec | None:
    """How a child measures like this process, or None when this process is not measured."""
    current = current_coverage()
    if current is None:
        return None
    config = current.config
    spec: CoverageSpec = {"data_file": parent_data_file(current), "suffix": SUFFIX_PREFIX}
    serialize = getattr(config, "serialize", None)
    if serialize is not None:  # coverage >= 7.10: the whole configuration, options included
        spec["config_file"] = CONFIG_DATA_PREFIX + serialize()
    else:
        spec.update(
            config_file=config.config_file or False,
            source=_absolute(config.source),
            branch=config.branch,
        )
    return spec


def _absolute(source: list[str] | None) -> list[str] | None:
    """Directories made absolute, as ``serialize`` does: a child starts measuring before it
    moves to the parent's working directory. A name that is not a directory is a package's."""
    if source is None:
        return None
    return [os.path.abspath(entry) if os.path.exists(entry) else entry for entry in source]


def child_data_file(data_file: str, pid: int) -> str:
    return f"{data_file}.{SUFFIX_PREFIX}.{pid}"


def start(spec: CoverageSpec | None) -> Any:
    """Start measuring this child as :func:`parent_spec` says; the Coverage, or None."""
    if not spec:
        return None
    try:
        from coverage import Coverage

        options = dict(spec)
        cov = Coverage(data_suffix=f"{options.pop('suffix')}.{os.getpid()}", **options)
        for warning in ("_warn_no_data", "_warn_unimported_source", "_warn_preimported_source"):
            setattr(cov, warning, False)
        cov.start()
    except Exception as error:  # measurement must never break the test itself
        print(
            f"pytest-concurrency: coverage not started in this worker: {error!r}", file=sys.stderr
        )
        return None
    return cov


def run_measured(spec: CoverageSpec | None, target: Callable[..., object], *args: Any) -> None:
    """Start measuring as ``spec`` says, call ``target(*args)``, then :func:`stop`.

    A child's entry point calls this first thing: a tracer started inside a function does not
    see the rest of that function, so everything the child does, start-up included, runs in
    ``target``'s frame, which starts after the measurement.
    """
    measured = start(spec)
    try:
        target(*args)
    finally:
        stop(measured)


def stop(cov: Any) -> None:
    """Stop measuring and write this child's data file."""
    if cov is None:
        return
    try:
        cov.stop()
        cov.save()
    except Exception as error:
        print(
            f"pytest-concurrency: coverage data of this worker not saved: {error!r}",
            file=sys.stderr,
        )


def merge_children(pids: Iterable[int | None]) -> None:
    """Merge the data files of these finished children into this process's coverage data."""
    current = current_coverage()
    data = getattr(current, "_data", None)
    if current is None or data is None or not hasattr(data, "update"):
        return  # not measured, or a coverage.py we do not know: ``coverage combine`` will do
    from coverage import CoverageData

    base = parent_data_file(current)
    for pid in pids:
        path = child_data_file(base, pid) if pid is not None else None
        if path is None or not os.path.exists(path):
            continue
        try:
            child = CoverageData(basename=path)
            child.read()
            data.update(child)
            if hasattr(child, "close"):
                child.close()
        except Exception:  # left beside the parent's file, for ``coverage combine``
            continue
        with contextlib.suppress(OSError):
            os.remove(path)
