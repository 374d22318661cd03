"""What schedule perturbation costs: nanoseconds per decision point and per traced opcode.

One thread runs (timed in CPU time of that thread, so that other load on the machine counts
less) a loop of the user's code (attribute loads and stores, a subscript, a call)
three ways: untraced; inside a perturbation call whose profile never gives way (the pure cost of
the callbacks, ``give_way_rate=0``); and the same around standard-library code only (what code
outside the roots costs). The extra time is divided by the decision points the engine counted
and by every opcode the loop executed.

    python benchmarks/perturb_overhead.py [--loops 200000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import timed_calls, user_loop

from pytest_concurrency.races import perturb
from pytest_concurrency.races.perturb import RunProfile, seeded_perturbation

HERE = Path(__file__).resolve().parent
NEVER_GIVE_WAY = RunProfile(give_way_rate=0.0, sleep_share=0.0, longest_sleep=0.0)
PAYLOAD = {"key": list(range(20)), "nested": {"a": "b" * 20}}


def stdlib_loop(loops: int) -> None:
    for _ in range(loops // 50):
        json.loads(json.dumps(PAYLOAD))


def count_opcodes(function: Callable[[int], None], loops: int) -> int:
    """Opcodes ``function(loops)`` executes (3.12+ counts with sys.monitoring: setting
    ``f_trace_opcodes`` in a call event does not reliably take effect there)."""
    if sys.version_info >= (3, 12):
        return _count_with_monitoring(function, loops)
    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        function(loops)
    finally:
        sys.settrace(None)
    return count


def _count_with_monitoring(function: Callable[[int], None], loops: int) -> int:
    monitoring: Any = sys.monitoring  # type: ignore[attr-defined,unused-ignore]
    tool = next(t for t in range(6) if monitoring.get_tool(t) is None)
    count = 0

    def on_instruction(code: Any, offset: int) -> None:
        nonlocal count
        count += 1

    monitoring.use_tool_id(tool, "count opcodes")
    try:
        monitoring.register_callback(tool, monitoring.events.INSTRUCTION, on_instruction)
        monitoring.set_events(tool, monitoring.events.INSTRUCTION)
        function(loops)
    finally:
        monitoring.set_events(tool, 0)
        monitoring.register_callback(tool, monitoring.events.INSTRUCTION, None)
        monitoring.free_tool_id(tool)
    return count


def measure(function: Callable[[int], None], loops: int, repeats: int) -> dict[str, float]:
    plain, traced, points = [], [], 0
    for _ in range(repeats):  # interleaved, medians
        plain.append(timed_calls(function, loops, None))
        engine = seeded_perturbation([HERE], seed=1)
        engine.fixed_profile = NEVER_GIVE_WAY
        traced.append(timed_calls(function, loops, engine))
        points = engine.stats.points
    extra = statistics.median(traced) - statistics.median(plain)
    return {"plain": statistics.median(plain), "traced": statistics.median(traced),
            "extra": extra, "points": points}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    options = parser.parse_args()
    loops = options.loops
    perturb.MAX_POINTS_PER_CALL = 10**12  # measure the callbacks, not the budget that ends them
    opcodes = count_opcodes(user_loop, loops)
    user = measure(user_loop, loops, options.repeats)
    stdlib = measure(stdlib_loop, options.loops, options.repeats)
    version = ".".join(map(str, sys.version_info[:3]))
    per_point = user["extra"] / user["points"] * 1e9 if user["points"] else float("nan")
    print(
        f"| {version} | {user['plain'] / opcodes * 1e9:.0f} | {per_point:.0f} "
        f"| {user['extra'] / opcodes * 1e9:.0f} | {user['traced'] / user['plain']:.1f}x "
        f"| {stdlib['traced'] / stdlib['plain']:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
