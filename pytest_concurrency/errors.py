"""Every exception class the plugin raises, in one place.

Pure module: no pytest import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading


class ConcurrencyFailure(AssertionError):
    """A concurrent run failed without an exception of its own (a hang)."""


class ConcurrencyUsageError(RuntimeError):
    """The harness was used in a way that cannot work; the message says how to fix it."""


class SettingsError(ValueError):
    """A bad setting; the message says where it came from and how to fix it."""


class LoopBlocked(RuntimeError):
    """A synchronous call blocked the event loop past a run's deadline; it was abandoned."""

    def __init__(self, message: str, thread: threading.Thread) -> None:
        super().__init__(message)
        self.thread = thread


class BarrierAborted(RuntimeError):
    """Raised in a worker waiting at ``concurrency.barrier()`` when another worker failed."""


class ProcessModeError(ConcurrencyUsageError):
    """Process mode cannot run this test as written; the message names the object and the fix."""


class WorkerCrashed(RuntimeError):
    """A worker process died during a run (signal or exit code in the message)."""


class DeadlockError(RuntimeError):
    """Threads of a concurrent test wait for each other for ever; the message says who and where."""


class ScheduleAborted(BaseException):
    """The series this worker belonged to was torn down (after a hang): unwind and stop."""


class PlotUnavailableError(ImportError):
    """matplotlib (the ``plot`` extra) is not installed."""


class ScalingUsageError(ValueError):
    """A scaling measurement was asked for in a way that cannot work; the message names the fix."""


class ScalingMeasurementError(RuntimeError):
    """A measurement could not complete: a round overran its deadline or a worker died."""


class ScalingWorkError(RuntimeError):
    """The unit of work raised inside a worker; the worker's traceback is in the message."""


class OutputPathError(OSError):
    """An output file (JSON report, chart) was not written: what is at its path is not a
    regular file, and it is never replaced."""
