"""What this machine can give a concurrent test: usable cores and the GIL state.

Pure module (no pytest import). Usable cores come from the CPU affinity mask and the
cgroup CPU quota, never from ``os.cpu_count()`` alone, because containers and CI runners
routinely expose more CPUs than they let a process use.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CoreBudget:
    """The cores a process may use, and where each limit came from."""

    usable: int
    cpu_count: int
    affinity: int | None
    cgroup_quota: float | None

    def describe(self) -> str:
        parts = [f"{self.usable} usable"]
        if self.affinity is not None and self.affinity != self.cpu_count:
            parts.append(f"affinity {self.affinity}")
        if self.cgroup_quota is not None:
            parts.append(f"cgroup quota {self.cgroup_quota:g}")
        parts.append(f"of {self.cpu_count} online")
        return ", ".join(parts)


def affinity_cores() -> int | None:
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None:
        return None
    try:
        return len(getter(0))
    except OSError:
        return None


def parse_cgroup_v2_max(text: str) -> float | None:
    """Parse ``cpu.max`` ("max 100000" or "200000 100000") into a number of CPUs."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_cgroup_v1(quota_text: str, period_text: str) -> float | None:
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs, or None when unlimited or unknown."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            return parse_cgroup_v2_max(v2.read_text())
        v1_quota = root / "cpu" / "cpu.cfs_quota_us"
        v1_period = root / "cpu" / "cpu.cfs_period_us"
        if v1_quota.is_file() and v1_period.is_file():
            return parse_cgroup_v1(v1_quota.read_text(), v1_period.read_text())
    except OSError:
        return None
    return None


def core_budget() -> CoreBudget:
    cpu_count = os.cpu_count() or 1
    affinity = affinity_cores()
    quota = cgroup_quota()
    usable = affinity if affinity is not None else cpu_count
    if quota is not None:
        usable = min(usable, max(1, math.ceil(quota)))
    return CoreBudget(
        usable=max(1, usable), cpu_count=cpu_count, affinity=affinity, cgroup_quota=quota
    )


def usable_cores() -> int:
    return core_budget().usable


def gil_enabled() -> bool:
    """True on GIL builds; on a free-threaded build, whether the GIL was re-enabled at run time."""
    probe = getattr(sys, "_is_gil_enabled", None)
    if probe is None:
        return True
    return bool(probe())


def free_threaded_build() -> bool:
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def describe_interpreter() -> str:
    impl = sys.implementation.name
    version = ".".join(str(part) for part in sys.version_info[:3])
    build = "free-threaded build" if free_threaded_build() else "GIL build"
    gil = "GIL enabled" if gil_enabled() else "GIL disabled"
    return f"{impl} {version}, {build}, {gil}"


PREFERRED_START_METHODS = ("forkserver", "spawn")
"""Process mode's start methods in order of preference, when none is chosen."""


def default_start_method() -> str:
    """forkserver where the platform can pass file descriptors between processes, else spawn:
    the first of :data:`PREFERRED_START_METHODS` that ``multiprocessing`` offers, answered as
    it answers (``reduction.HAVE_SEND_HANDLE``) without importing it, for the header."""
    import socket

    can_send_handles = (
        hasattr(socket, "CMSG_LEN")
        and hasattr(socket, "SCM_RIGHTS")
        and hasattr(socket.socket, "sendmsg")
    )
    return "forkserver" if sys.platform != "win32" and can_send_handles else "spawn"
