"""Pieces the benchmark scripts share: the machine's CPU model, and the marker form timed
through ``pytest.main`` on a generated file (per run, with pytest's own work cancelled out)."""

from __future__ import annotations

import contextlib
import io
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import pytest


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class PytestMarker:
    """A marked test of ``runs`` runs, written from ``template`` (formatted with ``workers`` and
    ``runs``) and run in this process by ``pytest.main(pytest_args)``."""

    def __init__(
        self, directory: Path, workers: int, template: str, stem: str, pytest_args: Sequence[str]
    ) -> None:
        self.directory = directory
        self.workers = workers
        self.template = template
        self.stem = stem
        self.pytest_args = tuple(pytest_args)
        self.count = 0
        (directory / "pytest.ini").write_text("[pytest]\n")

    def time(self, runs: int) -> float:
        self.count += 1  # a new module each time: pytest would reuse an imported one
        test = self.directory / f"{self.stem}_{self.count}.py"
        test.write_text(self.template.format(workers=self.workers, runs=runs))
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = pytest.main([*self.pytest_args, str(test)])
        elapsed = time.perf_counter() - start
        assert code == 0, f"pytest exited with {code}"
        test.unlink()
        return elapsed

    def per_run(self, runs: int) -> float:
        """``(T(runs) - T(1)) / (runs - 1)``: start-up and pytest's own work cancel out."""
        return (self.time(runs) - self.time(1)) / (runs - 1)
