"""Ctrl-C as a terminal delivers it, to pytest run in a child process (shared by the tests
of interrupts; a helper module, not a test module)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ISOLATION = ("-p", "no:cacheprovider", "-p", "no:run-parallel", "-p", "no:asyncio")
START_SECONDS = 60.0


def default_sigint() -> None:
    """In the child before exec: a run started in the background by a shell without job
    control inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler:
    the tests would test the shell, not the plugin."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_pytest(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m pytest`` in ``cwd``, isolated from other plugins, its output in one pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", *ISOLATION, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), "the inner test never started"


def interrupt_once_started(
    proc: subprocess.Popen[str], started: Path, *, settle: float = 0.0, timeout: float = 60
) -> str:
    """Ctrl-C once the inner test wrote ``started`` (and ``settle`` seconds later): all that
    pytest printed. The child is killed and reaped if it does not end in ``timeout``."""
    try:
        wait_for_file(started)
        time.sleep(settle)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # also closes the pipe
    return output
