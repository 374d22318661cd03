"""The modes: one module each behind :class:`~pytest_concurrency.runners.base.Runner`.

Modules are imported on first use, so a suite that never runs processes or asyncio never pays
for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_concurrency.races.perturb import NO_PERTURBATION, Perturbation
from pytest_concurrency.runners.base import Runner


def make_perturbation(*, enabled: bool, roots: Sequence[Path], seed: int) -> Perturbation:
    if not enabled:
        return NO_PERTURBATION
    from pytest_concurrency.races import perturb

    factory = getattr(perturb, "make_perturbation", None)
    if factory is None:
        return NO_PERTURBATION
    result: Perturbation = factory(enabled=enabled, roots=roots, seed=seed)
    return result


RUNNERS: dict[str, str] = {
    "threads": "pytest_concurrency.runners.threads",
    "processes": "pytest_concurrency.runners.processes",
    "asyncio": "pytest_concurrency.runners.aio",
}
"""The registry: each mode's module, imported on first use; it provides ``build_runner``."""


def make_runner(
    mode: str,
    workers: int,
    *,
    perturbation: Perturbation = NO_PERTURBATION,
    options: Mapping[str, Any] | None = None,
) -> Runner:
    """A runner for ``mode`` with ``workers`` workers (``options``: mode-specific knobs)."""
    if mode not in RUNNERS:
        raise ValueError(f"unknown mode {mode!r}")
    module = importlib.import_module(RUNNERS[mode])
    runner: Runner = module.build_runner(workers, perturbation, dict(options or {}))
    return runner
