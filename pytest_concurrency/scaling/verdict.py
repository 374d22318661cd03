"""Scaling verdicts: each mode's gain at the usable cores, then one word and its reasons.

Pure functions of :class:`~pytest_concurrency.scaling.stats.LevelStats` (no pytest import),
unit-tested on synthetic numbers. The verdicts are described in
:mod:`pytest_concurrency.scaling.api`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pytest_concurrency.scaling.records import WaitSite
from pytest_concurrency.scaling.stats import CPU_BOUND_BUSY, STEAL_SHARE_LIMIT, LevelStats

SCALES = "scales"
GIL_BOUND = "gil-bound"
IO_BOUND = "io-bound"
CONTENDED = "contended"
SERIAL = "serial"
ENVIRONMENT_LIMITED = "environment-limited"
INCONCLUSIVE = "inconclusive"
VERDICTS = (SCALES, GIL_BOUND, IO_BOUND, CONTENDED, SERIAL, ENVIRONMENT_LIMITED, INCONCLUSIVE)
THREADS = "threads"
PROCESSES = "processes"
MODES = (THREADS, PROCESSES)
MACHINE = "machine"
"""Records of the reference unit (:func:`scaling_child.reference_work` in threads): what the
machine delivers, at that moment, to perfectly parallel CPU work."""
SCALES_EFFICIENCY = 0.75
"""Least efficiency at the usable cores called scaling (on 2 cores: a speedup of 1.5)."""
FLAT_SPEEDUP = 1.25
"""A speedup below this at the usable cores is no gain at all."""
SLOWER_SPEEDUP = 0.9
"""A speedup interval wholly below this means more workers make the work slower."""
IO_BOUND_BUSY = 0.5
"""A worker alone that keeps less than this share of a core busy mostly waits (I/O, sleep)."""
IO_BEYOND_FACTOR = 1.1
"""io-bound: threads' speedup interval lies above the usable cores times this."""
ONE_CORE = (0.6, 1.4)
"""Cores of CPU in use that count as 'about one core' for the gil-bound verdict."""
PROCESSES_BUSY_SHARE = 0.75
"""gil-bound by CPU time: processes keep at least this share of their workers' cores busy."""
WAITING_DROP = 0.75
"""Workers wanting a CPU less than this share of what one alone wanted wait for each other."""
COST_INFLATION = 1.25
"""CPU time per call this many times higher with N workers means they slow each other."""
MACHINE_MIN_EFFICIENCY = 0.7
"""A machine delivering less than this share of N to the reference did not supply the cores."""


@dataclass(frozen=True)
class ModeJudgement:
    """How one mode did at the judged level: the most workers not above the usable cores."""

    mode: str
    judged: LevelStats | None
    top: LevelStats
    alone: LevelStats
    gain: str
    threshold: float
    reference: LevelStats | None = None
    """The machine's reference unit at the judged worker count, when measured."""

    @property
    def cpu_bound(self) -> bool:
        return self.alone.demand >= CPU_BOUND_BUSY

    @property
    def judged_workers(self) -> int | None:
        return None if self.judged is None else self.judged.workers

    @property
    def machine_short(self) -> bool:
        """Did the machine hold back the workers in most rounds, at one worker or the judged?"""
        return self.alone.machine_short or (self.judged is not None and self.judged.machine_short)

    @property
    def machine_weak(self) -> bool:
        """Did the machine deliver too little to the reference unit at the judged count?"""
        if self.reference is None or self.judged is None:
            return False
        if self.reference.machine_short:
            return True
        return self.reference.speedup.median < MACHINE_MIN_EFFICIENCY * self.judged.workers

    @property
    def cost_inflation(self) -> float | None:
        """CPU per call at the judged count over one worker's, beyond the reference unit's."""
        level = self.judged
        if level is None or level.cost_ratio is None:
            return None
        base = self.reference.cost_ratio if self.reference is not None else None
        return level.cost_ratio / base if base else level.cost_ratio

    @property
    def machine_visible(self) -> bool:
        return self.alone.queue is not None or self.alone.steal is not None

    @property
    def waits_on_others(self) -> bool:
        """Workers keep a CPU busy much less together than alone: they wait for each other."""
        return self.judged is not None and self.judged.demand < WAITING_DROP * self.alone.demand


def machine_level(machine: Sequence[LevelStats], workers: int) -> LevelStats | None:
    return next((level for level in machine if level.workers == workers), None)


def judge_mode(
    levels: Sequence[LevelStats], usable_cores: int, machine: Sequence[LevelStats] = ()
) -> ModeJudgement:
    """Classify the gain of one mode at the most workers not above the usable cores.

    For CPU-bound work the bar is 75% of what the machine delivered to the reference unit at
    that worker count (the machine's cores may not be whole cores: hyperthreads, a busy
    host); otherwise 75% of the worker count.
    """
    alone = levels[0]
    top = levels[-1]
    candidates = [level for level in levels if 1 < level.workers <= usable_cores]
    if not candidates:
        return ModeJudgement(levels[0].mode, None, top, alone, "unknown", math.nan)
    judged = candidates[-1]
    reference = machine_level(machine, judged.workers)
    capacity = float(judged.workers)
    if reference is not None and alone.demand >= CPU_BOUND_BUSY:
        capacity = min(capacity, reference.speedup.median)
    threshold = SCALES_EFFICIENCY * capacity
    speedup = judged.speedup
    if speedup.low >= threshold:
        gain = "scales"
    elif speedup.high >= threshold:
        gain = "unclear"
    elif speedup.high < SLOWER_SPEEDUP:
        gain = "slower"
    elif speedup.median < FLAT_SPEEDUP:
        gain = "flat"
    else:
        gain = "partial"
    return ModeJudgement(alone.mode, judged, top, alone, gain, threshold, reference)


class Verdict(NamedTuple):
    word: str
    reasons: list[str]


def describe_level(level: LevelStats) -> str:
    fraction = level.serial_fraction
    serial = "" if fraction is None else f", serial fraction {fraction:.2f}"
    return (
        f"{level.mode}: {level.speedup.text()} with {level.workers} workers "
        f"(efficiency {level.efficiency:.0%}, {level.cores_used:.2f} cores of CPU in use{serial})"
    )


def _io_signal(threads: ModeJudgement, usable_cores: int) -> bool:
    if threads.alone.demand >= IO_BOUND_BUSY:
        return False
    top = threads.top
    if top.workers > usable_cores:
        return top.speedup.low > usable_cores * IO_BEYOND_FACTOR
    return threads.gain == "scales"


def _io_reasons(threads: ModeJudgement, usable_cores: int) -> list[str]:
    top = threads.top
    reasons = [
        f"one worker alone keeps {threads.alone.busy:.0%} of a core busy: the unit spends "
        "its time waiting (I/O, sleep, a remote service), so workers overlap their waits"
    ]
    if top.workers > usable_cores:
        reasons.insert(
            0,
            f"threads reach {top.speedup.text()} with {top.workers} workers, more than "
            f"the {usable_cores} usable cores could give to work that needs a CPU",
        )
    return reasons


def _shortfall_reason(judgement: ModeJudgement) -> str:
    level = judgement.judged or judgement.alone
    if judgement.judged is not None and not judgement.judged.machine_short:
        level = judgement.alone
    parts = [
        f"{judgement.mode}: in {level.disturbed_rounds} of {level.rounds} rounds the machine "
        f"held back the {level.workers} CPU-bound worker(s); they got {level.cores_used:.2f} "
        f"cores of CPU time where {level.workers} were asked for"
    ]
    if level.queue is not None:
        parts.append(f"each waited {level.queue:.0%} of its time for a CPU (run queue)")
    if level.steal is not None and level.steal >= STEAL_SHARE_LIMIT:
        parts.append(f"the hypervisor took {level.steal:.0%} of the CPU time (steal)")
    return "; ".join(parts)


def _scales_outright(judgement: ModeJudgement) -> bool:
    """Reached 75% of the worker count itself, whatever the machine delivered."""
    level = judgement.judged
    return level is not None and level.speedup.low >= SCALES_EFFICIENCY * level.workers


def _weak_machine_reason(judgement: ModeJudgement) -> str:
    reference = judgement.reference
    assert reference is not None
    if reference.machine_short:
        return (
            f"the machine held back the reference unit (hashing in threads: perfectly "
            f"parallel CPU work) in {reference.disturbed_rounds} of {reference.rounds} rounds "
            f"with {reference.workers} workers (they waited for a CPU, or the hypervisor "
            "took it)"
        )
    return (
        f"the machine delivered only {reference.speedup.text()} with {reference.workers} "
        "workers to the reference unit (hashing in threads: perfectly parallel CPU work), "
        f"under {MACHINE_MIN_EFFICIENCY:.0%} of {reference.workers} cores"
    )


def _shortfall_hint(judgement: ModeJudgement) -> str | None:
    """What the workers' demand for a CPU still tells when the machine was short of cores.

    Time neither on a CPU nor queued for one is time blocked; one worker alone was not, so
    with more workers it is waiting for the others, whatever the machine. (The converse does
    not hold: on a loaded machine a woken lock waiter queues for a CPU instead of blocking,
    so a high demand does not show that the workers are independent.)
    """
    level = judgement.judged
    if level is None:
        return None
    wanted = (
        f"each wanted a CPU {level.demand:.0%} of its time with {level.workers} workers, "
        f"{judgement.alone.demand:.0%} alone"
    )
    if judgement.waits_on_others:
        return (
            f"{judgement.mode}: the workers also waited for each other ({wanted}): this mode "
            "would not scale on a free machine either"
        )
    return None


def set_aside_reason(level: LevelStats) -> str:
    total = level.rounds + level.set_aside
    return (
        f"{level.mode}: {level.set_aside} of {total} rounds with {level.workers} workers set "
        "aside: the machine held the workers back (they waited for a CPU)"
    )


def _unclear_reason(judgement: ModeJudgement) -> str:
    level = judgement.judged
    assert level is not None
    return (
        f"{judgement.mode}: the speedup interval with {level.workers} workers, "
        f"[{level.speedup.low:.2f}, {level.speedup.high:.2f}], straddles x{judgement.threshold:.2f}"
        f", the least speedup called scaling ({SCALES_EFFICIENCY:.0%} efficiency); more rounds "
        "(rounds=, budget=) or a quieter machine would decide"
    )


def _waiting_reason(judgement: ModeJudgement) -> str:
    level = judgement.judged
    assert level is not None
    return (
        f"{judgement.mode}: a worker wanted a CPU {judgement.alone.demand:.0%} of its time alone "
        f"but {level.demand:.0%} with {level.workers} workers: the workers wait for each other"
    )


def _scales_reasons(judgements: Mapping[str, ModeJudgement], gil: bool) -> list[str]:
    reasons = []
    if THREADS in judgements:
        if gil:
            reasons.append(
                "threads scale with the GIL enabled: the unit spends its time in code that "
                "releases the GIL (C code such as hashlib, zlib or numpy; I/O)"
            )
        else:
            reasons.append(
                "threads scale on this free-threaded build (GIL disabled): Python code runs in "
                "parallel here; on a GIL build pure-Python work would not scale in threads"
            )
    return reasons


def _cost_reason(judgement: ModeJudgement) -> str | None:
    level = judgement.judged
    inflation = judgement.cost_inflation
    if level is None or inflation is None or inflation < COST_INFLATION:
        return None
    beyond = "" if judgement.reference is None else ", beyond what the reference unit saw"
    return (
        f"{judgement.mode}: each call took {inflation:.2f} times the CPU time with "
        f"{level.workers} workers as with one{beyond}: the workers slow each other down "
        "(shared caches or memory bandwidth, spinning, contended cache lines)"
    )


def _no_gain_reasons(
    judgements: Mapping[str, ModeJudgement], gil: bool, wait_site: WaitSite | None
) -> list[str]:
    reasons = [_waiting_reason(j) for j in judgements.values() if j.waits_on_others]
    reasons += filter(None, map(_cost_reason, judgements.values()))
    if wait_site is not None:
        reasons.append(f"workers were seen waiting at {wait_site.describe()}")
    elif THREADS in judgements:
        reasons.append("where the workers wait could not be seen")
    if gil and set(judgements) == {THREADS}:
        reasons.append(
            "only threads were measured: with the GIL enabled a lock and the GIL look alike; "
            "measure processes too to tell them apart"
        )
    return reasons


def _threads_on_one_core(threads: ModeJudgement, gil: bool) -> bool:
    """CPU-bound threads that gain nothing and together keep about one core busy."""
    level = threads.judged
    return (
        gil
        and level is not None
        and threads.cpu_bound
        and ONE_CORE[0] <= level.cores_used <= ONE_CORE[1]
    )


def _gil_bound_by_cpu(threads: ModeJudgement, processes: ModeJudgement, gil: bool) -> bool:
    """The GIL is what holds the threads back, whether or not processes reach the bar of
    'scales': threads stay flat on about one core of CPU, while processes of the same work keep
    most of their cores busy and are clearly faster (their intervals do not meet). Processes
    may fall short of the bar for reasons of their own, such as hyperthreads that slow every
    call of interpreted code; that does not change why the threads do not scale."""
    if processes.gain == "scales" or threads.gain not in ("flat", "slower"):
        return False
    t, p = threads.judged, processes.judged
    if t is None or p is None or not _threads_on_one_core(threads, gil):
        return False
    return (
        processes.cpu_bound
        and p.cores_used >= PROCESSES_BUSY_SHARE * p.workers
        and p.speedup.low > t.speedup.high
    )


def _gil_bound_verdict(threads: ModeJudgement, processes: ModeJudgement) -> Verdict:
    assert threads.judged is not None and processes.judged is not None
    reasons = [
        f"threads stay at x{threads.judged.speedup.median:.2f} with "
        f"{threads.judged.cores_used:.2f} cores of CPU in use while processes reach "
        f"x{processes.judged.speedup.median:.2f}: the threads take turns holding the GIL",
        "to use more cores run the work in processes, on a free-threaded build, or in code "
        "that releases the GIL",
    ]
    if processes.gain != "scales":
        reasons.append(
            f"processes keep {processes.judged.cores_used:.2f} cores busy but fall short of "
            f"x{processes.threshold:.2f}, the least speedup called scaling with "
            f"{processes.judged.workers} workers"
        )
        reasons += filter(None, [_cost_reason(processes)])
    return Verdict(GIL_BOUND, reasons)


def _split_verdict(
    threads: ModeJudgement, processes: ModeJudgement, gil: bool, wait_site: WaitSite | None
) -> Verdict:
    """Threads and processes disagree: one mode scales and the other does not."""
    if processes.gain == "scales":
        if _threads_on_one_core(threads, gil):
            return _gil_bound_verdict(threads, processes)
        cause = (
            "on this free-threaded build the threads contend for something shared within the "
            "process (a lock, shared objects, the allocator)"
            if not gil
            else "the threads wait for each other within the process (a lock, a queue, or the "
            "GIL between short calls that release it)"
        )
        return Verdict(
            CONTENDED,
            [
                "threads do not scale while processes do: " + cause,
                *_no_gain_reasons({THREADS: threads}, False, wait_site),
            ],
        )
    return Verdict(
        CONTENDED,
        [
            "processes do not scale while threads do: the processes contend for something "
            "shared between processes (a file lock, a database, the disk)",
            *_no_gain_reasons({PROCESSES: processes}, gil, None),
        ],
    )


def decide(
    judgements: Mapping[str, ModeJudgement],
    usable_cores: int,
    gil: bool,
    wait_site: WaitSite | None = None,
) -> Verdict:
    """The verdict and its reasons from the per-mode judgements (pure)."""
    threads = judgements.get(THREADS)
    if threads is not None and _io_signal(threads, usable_cores):
        return Verdict(IO_BOUND, _io_reasons(threads, usable_cores))
    if all(j.judged is None for j in judgements.values()):
        return Verdict(
            ENVIRONMENT_LIMITED,
            [
                f"only {usable_cores} usable core: no worker count between 2 and the usable cores "
                "to judge scaling with cores"
            ],
        )
    weak = [j for j in judgements.values() if j.cpu_bound and j.machine_weak]
    if weak and not all(_scales_outright(j) for j in judgements.values()):
        return Verdict(
            ENVIRONMENT_LIMITED,
            [
                _weak_machine_reason(weak[0]),
                "the machine did not supply the cores: rerun on a quieter machine or with fewer "
                "workers",
                *filter(None, map(_shortfall_hint, judgements.values())),
            ],
        )
    short = [
        j for j in judgements.values() if j.gain != "scales" and j.cpu_bound and j.machine_short
    ]
    if short:
        return Verdict(
            ENVIRONMENT_LIMITED,
            [
                *map(_shortfall_reason, short),
                "the machine did not supply the cores: rerun on a quieter machine or with fewer "
                "workers",
                *filter(None, map(_shortfall_hint, judgements.values())),
            ],
        )
    processes = judgements.get(PROCESSES)
    if threads is not None and processes is not None and _gil_bound_by_cpu(threads, processes, gil):
        return _gil_bound_verdict(threads, processes)
    unclear = [j for j in judgements.values() if j.gain in ("unclear", "unknown")]
    if unclear:
        return Verdict(INCONCLUSIVE, [_unclear_reason(j) for j in unclear if j.judged])
    gains = {mode: j.gain for mode, j in judgements.items()}
    if all(gain == "scales" for gain in gains.values()):
        return Verdict(SCALES, _scales_reasons(judgements, gil))
    if threads is not None and processes is not None and "scales" in gains.values():
        return _split_verdict(threads, processes, gil, wait_site)
    reasons = _no_gain_reasons(judgements, gil, wait_site)
    unseen = [j.mode for j in judgements.values() if j.cpu_bound and not j.machine_visible]
    if unseen:
        reasons.append(
            "whether the machine supplied the cores could not be seen here (no scheduler "
            "statistics): treat this verdict with care"
        )
    inflated = any(_cost_reason(j) is not None for j in judgements.values())
    if all(gain == "flat" for gain in gains.values()) and not inflated:
        return Verdict(
            SERIAL,
            ["no mode gains from more workers: the work runs one worker at a time", *reasons],
        )
    if inflated:
        reasons.insert(
            0,
            "the workers run side by side but every call costs more CPU time: they slow "
            "each other down",
        )
    elif "slower" in gains.values():
        reasons.insert(0, "more workers make the work slower: the workers get in each other's way")
    else:
        reasons.insert(
            0,
            "more workers gain a little, far from one core each: the workers "
            "get in each other's way",
        )
    return Verdict(CONTENDED, reasons)
