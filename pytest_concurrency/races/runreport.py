"""What the controlled scheduler reports: of a failed run, the interleaving before the failure,
the workers' state at a hang and the text of a deadlock; of a test, the summary of its runs and
PCT's guarantee.

Pure module: no pytest import.
"""

from __future__ import annotations

import linecache
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pytest_concurrency import messages
from pytest_concurrency.engine.outcomes import RunRecord
from pytest_concurrency.races.lockgraph import format_site, wait_cycle
from pytest_concurrency.races.runstate import RunState, Status, Step
from pytest_concurrency.races.strategies import STRATEGY_PCT, Guarantee, PCTStrategy

if TYPE_CHECKING:
    from pytest_concurrency.races.scheduler import ControlledScheduler

_monotonic = time.monotonic

SHOWN_LINES = 20
"""Lines of interleaving in a failure report (a worker's steps on one line fold into one)."""
SOURCE_WIDTH = 64


def deadlock_text(run: RunState, waiting: list[int], holders: dict[int, int | None]) -> str:
    """The report of a deadlock: what each waiting worker waits for, who holds it, the cycle."""
    lines = [messages.DEADLOCK_CONTROLLED_HEADLINE.format(run=run.index, step=run.points)]
    for worker in waiting:
        blocked = run.blocked[worker]
        if blocked is None:
            continue
        holder = holders.get(worker)
        if holder is None:
            lines.append(
                messages.DEADLOCK_NO_HOLDER_LINE.format(
                    who=f"worker {worker}", what=blocked.what, site=format_site(blocked.site)
                )
            )
        else:
            lines.append(
                messages.DEADLOCK_WAIT_LINE.format(
                    who=f"worker {worker}",
                    what=blocked.what,
                    site=format_site(blocked.site),
                    holder=f"worker {holder}",
                    taken_at=format_site(blocked.taken_at()),
                )
            )
    known = {w: h for w, h in holders.items() if h is not None}
    cycle = wait_cycle(waiting[0], {w: w for w in known}, known)
    for start in waiting:
        if cycle is not None:
            break
        cycle = wait_cycle(start, {w: w for w in known}, known)
    if cycle is not None:
        parts = []
        for worker, _ in cycle:
            blocked = run.blocked[worker]
            parts.append(f"worker {worker} -> {blocked.what if blocked else '?'}")
        parts.append(f"worker {cycle[0][0]}")
        lines.append(messages.DEADLOCK_CYCLE_LINE.format(cycle=" -> ".join(parts)))
    return "\n".join(lines)


def run_notes(
    run: RunState, record: RunRecord, strategy: str, *, step_deadline: float, blocked_after: float
) -> list[str]:
    """The lines a failed run's report adds: the schedule (``strategy`` names it), whether it
    was exact, the interleaving before the failure, and at a hang the workers' state."""
    lines = [
        messages.SCHEDULE_NOTE.format(
            strategy=strategy,
            points=run.points,
            decisions=run.decisions,
            fingerprint=run.interleaving,
        )
    ]
    if run.detaches:
        lines.append(
            messages.SCHEDULE_DETACHED.format(
                count=run.detaches, seconds=step_deadline, blocked=2 * blocked_after
            )
        )
    else:
        lines.append(messages.SCHEDULE_EXACT)
    steps, what = steps_before_failure(run, record)
    folded = fold_steps(steps)[-SHOWN_LINES:]
    if folded:
        shown = sum(len(group) for group in folded)
        lines.append(messages.SCHEDULE_STEPS_TITLE.format(shown=shown, total=run.points, what=what))
        lines.extend(step_line(group) for group in folded)
    if record.hung_workers:
        lines.extend(state_lines(run))
    return lines


def steps_before_failure(run: RunState, record: RunRecord) -> tuple[list[Step], str]:
    """The steps worth showing (up to the end of the first failing call), and what they lead to."""
    history = list(run.history)
    if record.failures:  # up to the end of the first failing call
        failure = record.failures[0]
        ends = [
            i
            for i, step in enumerate(history)
            if step.worker == failure.worker and step.label == "end"
        ]
        stop = ends[0] if ends else len(history) - 1
        what = messages.SCHEDULE_BEFORE_FAILURE.format(
            worker=failure.worker, error=failure.origin.exc_type
        )
        return history[: stop + 1], what
    if record.hung_workers:
        return history, messages.SCHEDULE_BEFORE_HANG
    return history, messages.SCHEDULE_BEFORE_CHECK


def state_lines(run: RunState) -> list[str]:
    """What each unfinished worker is doing: the report of a hang."""
    lines = []
    for worker in range(run.workers):
        status = run.status[worker]
        blocked = run.blocked[worker]
        if status is Status.DONE:
            continue
        if blocked is not None:
            state = f"waits for {blocked.what} at {format_site(blocked.site)}"
        elif status is Status.DETACHED:
            state = messages.SCHEDULE_STATE_DETACHED
        elif run.current == worker:
            state = messages.SCHEDULE_STATE_RUNNING.format(seconds=_monotonic() - run.progress_at)
        else:
            state = "waits for its turn"
        lines.append(f"    worker {worker} {state}")
    return lines


def fold_steps(steps: Sequence[Step]) -> list[list[Step]]:
    """Steps grouped so that a worker's consecutive steps on one line of code are one group
    (the accesses and synchronization calls of ``concurrency.barrier()`` fold into one); events
    without a line (end, detached, deadlock) stay apart."""
    groups: list[list[Step]] = []
    for step in steps:
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and step.site[0]
            and last.worker == step.worker
            and last.site == step.site
        ):
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


def format_steps(steps: Sequence[Step]) -> list[str]:
    """One line per group of :func:`fold_steps`."""
    return [step_line(group) for group in fold_steps(steps)]


def step_line(group: Sequence[Step]) -> str:
    """ "step N  worker W  file:line  [what it did last there: ]source (xcount)"."""
    step = group[0]
    repeat = f" (x{len(group)})" if len(group) > 1 else ""
    where = format_site(step.site) if step.site[0] else ""
    label = next((s.label for s in reversed(group) if s.label), "")
    if label and not step.site[0]:
        text = label
    else:
        source = linecache.getline(step.site[0], step.site[1]).strip() if step.site[0] else ""
        if len(source) > SOURCE_WIDTH:
            source = source[: SOURCE_WIDTH - 3] + "..."
        text = f"{label}: {source}" if label else source
    return f"    step {step.number:>5}  worker {step.worker}  {where:<24} {text}{repeat}".rstrip()


def guarantee_of(schedulers: Sequence[ControlledScheduler]) -> Guarantee | None:
    """PCT's statement over the covered clean runs; None for random or when none count.

    Each counted run found a given depth-d bug with probability at least 1/(n k^(d-1)) for its
    own n and k; with the largest n and k of them, the stated bound holds for all.
    """
    pct = [s for s in schedulers if isinstance(s.strategy, PCTStrategy)]
    counted = [
        run
        for s in pct
        for run in s.runs
        if run.clean and run.coverage.covered and not run.detaches
    ]
    if not pct or not counted:
        return None
    return Guarantee(
        workers=max(run.workers for run in counted),
        steps=max(run.coverage.steps_bound for run in counted),
        depth=max(s.depth for s in pct),
        clean_runs=len(counted),
        runs=sum(len(s.runs) for s in pct),
    )


def summary_of(schedulers: Sequence[ControlledScheduler]) -> dict[str, Any]:
    """The JSON-able summary of a test's controlled runs."""
    runs = [run for s in schedulers for run in s.runs]
    first = schedulers[0]
    entry: dict[str, Any] = {
        "strategy": first.strategy_name,
        "workers": max(s.workers for s in schedulers),
        "runs": len(runs),
        "max_points": max((run.points for run in runs), default=0),
        "max_decisions": max((run.decisions for run in runs), default=0),
        "detached_runs": sum(1 for run in runs if run.detaches),
    }
    if first.strategy_name == STRATEGY_PCT:
        entry["depth"] = first.depth
        guarantee = guarantee_of(schedulers)
        entry["guarantee"] = guarantee.as_dict() if guarantee is not None else None
    return entry
