"""What a scaling measurement measures: its settings, checked, and its plan.

The user's ``workers=``, ``modes=``, ``rounds=``, ``budget=`` and ``seed=`` are checked here
(a :class:`~pytest_concurrency.errors.ScalingUsageError` says what to pass instead), and
turned into a :class:`MeasurementPlan`: the worker counts per mode, the calls per worker per
round and the number of rounds, sized so the rounds fit the time budget. The method is
described in :mod:`pytest_concurrency.scaling.api`. Pure module: no pytest import.
"""

from __future__ import annotations

import functools
import inspect
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pytest_concurrency.engine.outcomes import exception_text
from pytest_concurrency.errors import ScalingUsageError
from pytest_concurrency.scaling import messages as scaling_messages
from pytest_concurrency.scaling.measure import Unit
from pytest_concurrency.scaling.stats import DEFAULT_BUDGET_SECONDS
from pytest_concurrency.scaling.verdict import MODES, PROCESSES, THREADS

# --------------------------------------------------------------------------- limits

MAX_BUDGET_SECONDS = 3600.0
MAX_WORKERS = 512
MAX_DEFAULT_LEVELS = 8
MIN_ROUNDS = 5
MAX_ROUNDS = 25
TARGET_ROUNDS = 12
"""Rounds the batch size is planned for, assuming the worst case (fully serial work)."""
MIN_EXPLICIT_ROUNDS = 3
MAX_EXPLICIT_ROUNDS = 1000
MAX_OVERRUN = 3.0
"""Refuse a measurement whose smallest plan would take more than this many budgets."""
MIN_BATCH_SECONDS = 0.02
"""A worker's batch of calls lasts at least this long, so start skew stays a small error."""

# --------------------------------------------------------------------------- validation

MARKER_KEYS = ("workers", "modes", "expect", "min_efficiency", "rounds", "budget", "seed", "force")
"""The keywords of ``@pytest.mark.scaling``: the measurement's settings and its gate."""


def marker_options(args: Sequence[object], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The scaling marker's keywords, checked by name (their values are checked with the plan).

    A positional argument or an unknown keyword is a :class:`ScalingUsageError`.
    """
    if args:
        raise ScalingUsageError(scaling_messages.SCALING_MARKER_POSITIONAL.format(args=tuple(args)))
    for key in kwargs:
        if key not in MARKER_KEYS:
            raise ScalingUsageError(
                scaling_messages.SCALING_MARKER_UNKNOWN_KEY.format(
                    key=key, choices=", ".join(MARKER_KEYS)
                )
            )
    return dict(kwargs)


@dataclass(frozen=True)
class MeasurementPlan:
    """Which levels per mode, how many calls per worker per round, how many rounds."""

    levels: dict[str, tuple[int, ...]]
    calls: int = 1
    reference_calls: int = 1
    min_rounds: int = MIN_ROUNDS
    max_rounds: int = MAX_ROUNDS

    @property
    def weight(self) -> int:
        """Batches of work per round if the work were fully serial (the worst case)."""
        return sum(sum(levels) for levels in self.levels.values())

    def round_order(self, rng: random.Random) -> list[tuple[str, int]]:
        """Every (mode, level) once, in a seeded shuffled order."""
        order = [(mode, n) for mode, levels in self.levels.items() for n in levels]
        rng.shuffle(order)
        return order


def default_levels(limit: int) -> tuple[int, ...]:
    """1..limit when small; else a spread of at most MAX_DEFAULT_LEVELS counts up to limit."""
    if limit <= MAX_DEFAULT_LEVELS:
        return tuple(range(1, limit + 1))
    picks = {1, limit}
    for i in range(1, MAX_DEFAULT_LEVELS - 1):
        picks.add(max(2, round(limit ** (i / (MAX_DEFAULT_LEVELS - 1)))))
    return tuple(sorted(picks))


def validate_modes(modes: str | Iterable[str]) -> tuple[str, ...]:
    chosen = (modes,) if isinstance(modes, str) else tuple(modes)
    choices = ", ".join(repr(m) for m in MODES)
    if not chosen:
        raise ScalingUsageError(scaling_messages.SCALING_NO_MODES.format(choices=choices))
    for mode in chosen:
        if mode == "asyncio":
            raise ScalingUsageError(scaling_messages.SCALING_ASYNCIO_MODE)
        if mode not in MODES:
            raise ScalingUsageError(
                scaling_messages.SCALING_BAD_MODE.format(mode=mode, choices=choices)
            )
    return tuple(dict.fromkeys(chosen))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def plan_levels(
    usable_cores: int, workers: int | Sequence[int] | None, modes: Sequence[str]
) -> dict[str, tuple[int, ...]]:
    """Worker counts per mode: by default threads to twice the cores, processes to the cores."""
    error = ScalingUsageError(
        scaling_messages.SCALING_BAD_WORKERS.format(value=workers, limit=MAX_WORKERS)
    )
    if workers is None:
        limits = {THREADS: max(2, 2 * usable_cores), PROCESSES: max(2, usable_cores)}
        return {mode: default_levels(limits[mode]) for mode in modes}
    if _is_count(workers):
        assert isinstance(workers, int)
        if not 2 <= workers <= MAX_WORKERS:
            raise error
        return {mode: default_levels(workers) for mode in modes}
    value: object = workers
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise error
    counts = list(value)
    if not counts or not all(_is_count(n) and 1 <= n <= MAX_WORKERS for n in counts):
        raise error
    if max(counts) < 2:
        raise error
    levels = tuple(sorted({1, *counts}))
    return {mode: levels for mode in modes}


def validate_rounds(rounds: int | None) -> int | None:
    if rounds is None:
        return None
    if not _is_count(rounds) or not MIN_EXPLICIT_ROUNDS <= rounds <= MAX_EXPLICIT_ROUNDS:
        raise ScalingUsageError(
            scaling_messages.SCALING_BAD_ROUNDS.format(
                value=rounds, low=MIN_EXPLICIT_ROUNDS, high=MAX_EXPLICIT_ROUNDS
            )
        )
    return rounds


def validate_budget(budget: float | None) -> float:
    if budget is None:
        return DEFAULT_BUDGET_SECONDS
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int, float))
        or not 0 < budget <= MAX_BUDGET_SECONDS
    ):
        raise ScalingUsageError(
            scaling_messages.SCALING_BAD_BUDGET.format(value=budget, high=MAX_BUDGET_SECONDS)
        )
    return float(budget)


def unit_name(fn: Callable[..., Any]) -> str:
    """A readable name for the unit of work (a partial is named by its function)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def validate_unit(unit: Unit, modes: Sequence[str]) -> None:
    if not callable(unit.fn):
        raise ScalingUsageError(scaling_messages.SCALING_NOT_CALLABLE.format(value=unit.fn))
    name = unit_name(unit.fn)
    if inspect.iscoroutinefunction(unit.fn):
        raise ScalingUsageError(scaling_messages.SCALING_COROUTINE_UNIT.format(name=name))
    if PROCESSES in modes:
        try:
            unit.payload()
        except Exception as exc:
            raise ScalingUsageError(
                scaling_messages.SCALING_UNPICKLABLE_UNIT.format(
                    name=name, error=f"{type(exc).__name__}: {exception_text(exc)}"
                )
            ) from exc


def validate_seed(seed: int) -> None:
    if not _is_count(seed):
        raise ScalingUsageError(scaling_messages.SCALING_BAD_SEED.format(value=seed))


# --------------------------------------------------------------------------- planning


def reference_levels(levels: Mapping[str, Sequence[int]], usable_cores: int) -> tuple[int, ...]:
    """Worker counts for the machine's reference unit: 1 and every measured count from 2 up
    to the usable cores (the counts the verdict is judged at)."""
    counts = {n for measured in levels.values() for n in measured if 1 < n <= usable_cores}
    return (1, *sorted(counts)) if counts else ()


def plan_calls(
    levels: Mapping[str, Sequence[int]],
    seconds_per_call: float,
    remaining: float,
    rounds: int | None,
    seconds_per_reference_call: float = 1e-3,
) -> MeasurementPlan:
    """Size a worker's batch so the planned rounds fit the remaining budget, worst case."""
    plan = MeasurementPlan(levels={mode: tuple(counts) for mode, counts in levels.items()})
    target = rounds or TARGET_ROUNDS
    spare = max(levels.get(THREADS, (0,)))
    batch = max(MIN_BATCH_SECONDS, remaining / (target * plan.weight + spare))
    calls = max(1, round(batch / max(seconds_per_call, 1e-9)))
    reference_calls = max(1, round(batch / max(seconds_per_reference_call, 1e-9)))
    plan = replace(plan, calls=calls, reference_calls=reference_calls)
    if rounds is not None:
        return replace(plan, min_rounds=rounds, max_rounds=rounds)
    return plan


def check_budget(plan: MeasurementPlan, seconds_per_call: float, budget: float, name: str) -> None:
    """Refuse a unit so slow that even the smallest plan would take several budgets."""
    batch = plan.calls * seconds_per_call
    needed = plan.min_rounds * plan.weight * batch
    if needed > MAX_OVERRUN * budget:
        levels = "; ".join(f"{mode} {list(counts)}" for mode, counts in plan.levels.items())
        raise ScalingUsageError(
            scaling_messages.SCALING_BUDGET_TOO_SMALL.format(
                name=name,
                call=seconds_per_call,
                rounds=plan.min_rounds,
                levels=levels,
                needed=needed,
                budget=budget,
            )
        )
