"""The modes: one module each behind :class:`~pytest_concurrency.runners.base.Runner`.

Modules are imported on first use, so a suite that never runs processes or asyncio never pays
for them.
"""

from __future__ import annotations

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


def make_runner(
    mode: str,
    workers: int,
    *,
    perturbation: Perturbation = NO_PERTURBATION,
    options: Mapping[str, Any] | None = None,
) -> Runner:
    """A runner for ``mode`` with ``workers`` workers (``options``: mode-specific knobs)."""
    if mode == "threads":
        from pytest_concurrency.runners.threads import ThreadRunner

        return ThreadRunner(workers, perturbation)
    if mode == "processes":
        from pytest_concurrency.runners.processes import ProcessRunner  # type: ignore[import-not-found,unused-ignore]

        runner: Runner = ProcessRunner(workers, perturbation=perturbation, **(options or {}))
        return runner
    if mode == "asyncio":
        from pytest_concurrency.runners.aio import AsyncioRunner  # type: ignore[import-not-found,unused-ignore]

        # the seeded task orders are asyncio mode's schedule perturbation: off with perturb=False
        perturb = perturbation is not NO_PERTURBATION
        runner = AsyncioRunner(workers, perturb=perturb, **(options or {}))
        return runner
    raise ValueError(f"unknown mode {mode!r}")
