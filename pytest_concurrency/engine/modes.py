"""The modes, as the rest of the package needs to know them: one table, no runner imported.

What a mode *does* lives in its runner (``pytest_concurrency.runners``, one module each, found
through the registry there); what the settings, the session, the lock watch and the report
need to *know* about a mode is stated here once, so that no module outside ``runners/`` asks
``if mode == "threads"``. A new mode adds a row here and a runner there; the suite checks
that the two lists agree. Pure module: no pytest import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    unit: str  # what the report calls its workers: "4 threads", "4 tasks"
    runs_coroutines: bool  # the test body is a coroutine function (and must be)
    workers_are_threads: bool  # OS threads: the lock watch and the controlled scheduler apply
    one_worker_per_core: bool  # workers=auto: one per usable core, else oversubscribe
    start_method_matters: bool  # --concurrency-start-method applies
    shares_process: bool  # the workers share one process: its globals (warning filters...)


THREADS = Mode("threads", "threads", False, True, False, False, True)
PROCESSES = Mode("processes", "processes", False, False, True, True, False)
ASYNCIO = Mode("asyncio", "tasks", True, False, False, False, True)
DEFAULT_MODE = THREADS.name
MODES: dict[str, Mode] = {mode.name: mode for mode in (THREADS, PROCESSES, ASYNCIO)}
NAMES = tuple(MODES)
COROUTINE_MODE = next(mode.name for mode in MODES.values() if mode.runs_coroutines)


def mode_of(name: str) -> Mode:
    """The mode called ``name`` (names are checked when settings are read)."""
    return MODES[name]
