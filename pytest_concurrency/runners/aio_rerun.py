"""The rerun of a failing asyncio test in plain order on the real clock (issue 19).

A failure found on the virtual clock, in a seeded order, with late timers or injections, may or
may not happen as plain asyncio runs the code. To say which, the failing test of a marker's
series is rerun once, by a runner of its own: asyncio's FIFO order, the real clock, every timer
on time, nothing injected, on the same loop when it was pytest-asyncio's, with the same calls
and the run's own deadline (the series' timeout, pytest-timeout's margin). Its result is the
report's "fails without reordering" or "passes without reordering" line
(:class:`~pytest_concurrency.engine.aiorun.LoopRun`).

No rerun is made, and the report says what was judged instead (the failing run itself when it
was plain, else run 0, which was), when:

* the failing run already kept FIFO order on the real clock (it is the answer);
* it is a run of ``concurrency.runs()``: its calls share the state the runs before left, and
  the check after the run is the test's own code, which a rerun does not run;
* the failing run hung (a rerun would wait for the deadline again);
* the failing run took more than :data:`RERUN_SECONDS` on the loop's clock: on the real clock
  the rerun would sleep that long (60 s of virtual sleep are not rerun).
"""

from __future__ import annotations

from pytest_concurrency import messages
from pytest_concurrency.engine.aiorun import REAL, LoopRun
from pytest_concurrency.engine.outcomes import RunRecord, first_line, group_failures
from pytest_concurrency.runners.base import Runner, RunPlan, Series

RERUN_SECONDS = 0.5
"""The longest failing run (on the loop's clock) that is rerun on the real clock."""


def judge_failing_run(series: Series, record: RunRecord, rerun_with: Runner | None) -> None:
    """Add the verdict on plain order to the failing ``record``'s notes and facts, rerunning
    ``series``' calls once on ``rerun_with`` (a FIFO runner on the real clock; None: no rerun,
    a harness run) when the rules above allow it."""
    facts = record.loop
    if facts is None:
        return
    if facts.plain and facts.clock == REAL:
        record.notes.extend(facts.judged_without_rerun(None))
        return
    why = skip_reason(record, facts, rerun_with)
    if why is None and rerun_with is not None:
        try:
            failure = rerun_once(rerun_with, series, record.index)
        except Exception as error:  # the rerun's trouble never hides the failure found
            why = messages.RERUN_SKIPPED_ERROR.format(
                error=f"{type(error).__name__}: {first_line(error)}"
            )
        else:
            record.notes.extend(facts.rerun_result(failure))
            return
    record.notes.extend(facts.judged_without_rerun(why))


def skip_reason(record: RunRecord, facts: LoopRun, rerun_with: Runner | None) -> str | None:
    """Why the failing run is not rerun on the real clock; None: it is."""
    if rerun_with is None:
        return messages.RERUN_SKIPPED_HARNESS
    if record.hung_workers:
        return messages.RERUN_SKIPPED_HUNG
    if facts.seconds > RERUN_SECONDS:
        return messages.RERUN_SKIPPED_LONG.format(seconds=facts.seconds, bound=RERUN_SECONDS)
    return None


def rerun_once(runner: Runner, series: Series, index: int) -> str | None:
    """Run ``series``' calls once more on ``runner`` (as run ``index``): what failed in that
    run, or None when it passed."""
    done: list[RunRecord] = []

    def on_run_done(record: RunRecord) -> bool:
        done.append(record)
        return False

    plain = Series(
        calls=series.calls,
        plan=RunPlan(count=1, first_index=index, outer=series.plan.outer),
        seed=series.seed,
        timeout=series.timeout,
        on_run_done=on_run_done,
    )
    runner.run_series(plain)
    if not done:
        raise RuntimeError("the rerun made no run")
    rerun = done[0]
    if rerun.interrupt is not None:  # Ctrl-C in a task: the session ends, as in any run
        raise rerun.interrupt
    groups = group_failures(rerun.failures)
    if groups:
        return groups[0].origin.describe()
    return messages.RERUN_FAILURE_HUNG if rerun.hung_workers else None
