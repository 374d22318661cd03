"""Lock-order inversions and wait-for cycles: the graphs behind the deadlock reports.

*Lock order*: whenever a thread takes lock ``B`` while it holds lock ``A`` the graph gets an
edge ``A -> B`` with both acquisition sites. A cycle (``A -> B`` somewhere, ``B -> A``
elsewhere) is a potential deadlock even if no run ever hung, as in the Linux kernel's lockdep:
two threads running the two paths at once can each take their first lock and wait for ever on
the second. A cycle whose every edge was taken under one common lock (a "gate" lock) cannot
deadlock and is not reported.

*Wait for*: a thread waits for a lock, the lock's holder waits for another lock, and so on; if
the chain comes back to the first thread, none of them can ever go on.

Pure module: no pytest import.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pytest_concurrency import messages

Site = tuple[str, int]
"""Where a lock was created, taken or waited for: (file name, line number)."""
UNKNOWN_SITE: Site = ("<unknown>", 0)
MAX_CYCLES = 5
MAX_EDGES = 10_000
"""A test that makes more distinct lock-order edges than this stops recording new ones."""

Node = TypeVar("Node", bound=Hashable)


def format_site(site: Site) -> str:
    filename, line = site
    return f"{os.path.basename(filename)}:{line}"


@dataclass(frozen=True)
class OrderEdge:
    """``second`` was taken while ``first`` was held."""

    first: int
    second: int
    who: str  # "worker 2", or a thread name
    first_site: Site
    second_site: Site
    guards: frozenset[int] = frozenset()  # other locks held at the time


@dataclass
class LockOrderGraph:
    """Every distinct "taken while holding" pair seen in one test, with its first sites."""

    names: dict[int, str] = field(default_factory=dict)
    classes: dict[int, str] = field(default_factory=dict)  # lock -> kind and creation site
    edges: dict[tuple[int, int], OrderEdge] = field(default_factory=dict)
    _next: dict[int, set[int]] = field(default_factory=dict)

    def name(self, lock: int, name: str, lock_class: str = "") -> None:
        self.names.setdefault(lock, name)
        self.classes.setdefault(lock, lock_class or name)

    def add(self, edge: OrderEdge) -> bool:
        """Record ``edge`` if its pair is new; True if it was."""
        key = (edge.first, edge.second)
        if edge.first == edge.second or key in self.edges or len(self.edges) >= MAX_EDGES:
            return False
        self.edges[key] = edge
        self._next.setdefault(edge.first, set()).add(edge.second)
        return True

    def inversions(self, limit: int = MAX_CYCLES) -> list[tuple[list[OrderEdge], int]]:
        """Distinct cycles (each as its edges, in order) and how many times each was seen,
        skipping gate-guarded ones. Cycles between new locks of the same classes, taken at the
        same sites (a fresh object per run), count as one."""
        found: dict[frozenset[tuple[str, str, Site, Site]], list[list[OrderEdge]]] = {}
        seen: set[frozenset[int]] = set()
        for first, second in sorted(self.edges):
            path = shortest_path(self._next, second, first)
            if path is None:
                continue
            nodes = [first, *path]
            key = frozenset(nodes)
            if key in seen:
                continue
            seen.add(key)
            cycle = [self.edges[(a, b)] for a, b in itertools.pairwise(nodes)]
            if guarded(cycle):
                continue
            signature = frozenset(
                (
                    self.classes.get(e.first, ""),
                    self.classes.get(e.second, ""),
                    e.first_site,
                    e.second_site,
                )
                for e in cycle
            )
            if signature not in found and len(found) >= limit:
                continue
            found.setdefault(signature, []).append(cycle)
        return [(cycles[0], len(cycles)) for cycles in found.values()]

    def describe(self, cycle: Sequence[OrderEdge], count: int = 1) -> list[str]:
        locks = sorted({edge.first for edge in cycle}, key=lambda lock: self.label(lock))
        names = " and ".join(self.label(lock) for lock in locks)
        lines = [messages.INVERSION_HEADLINE.format(locks=names)]
        if count > 1:
            lines.append(messages.INVERSION_REPEATED.format(count=count))
        for edge in cycle:
            lines.append(
                messages.INVERSION_EDGE.format(
                    who=edge.who,
                    first=self.label(edge.first),
                    second=self.label(edge.second),
                    first_site=format_site(edge.first_site),
                    second_site=format_site(edge.second_site),
                )
            )
        lines.append(messages.INVERSION_FIX)
        return lines

    def label(self, lock: int) -> str:
        return self.names.get(lock, f"lock {lock}")


def shortest_path(
    successors: Mapping[Node, Iterable[Node]], start: Node, goal: Node
) -> list[Node] | None:
    """Nodes from ``start`` to ``goal`` inclusive, by breadth-first search; None if no path."""
    parents: dict[Node, Node | None] = {start: None}
    queue: deque[Node] = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            parent = parents[node]
            while parent is not None:
                path.append(parent)
                parent = parents[parent]
            return path[::-1]
        for following in sorted(successors.get(node, ()), key=repr):
            if following not in parents:
                parents[following] = node
                queue.append(following)
    return None


def guarded(cycle: Sequence[OrderEdge]) -> bool:
    """True if one lock was held across every edge of ``cycle``: the paths cannot overlap."""
    common: frozenset[int] | None = None
    for edge in cycle:
        common = edge.guards if common is None else common & edge.guards
        if not common:
            return False
    return bool(common)


def wait_cycle(
    start: Node, waits_for: Mapping[Node, int], holder: Mapping[int, Node]
) -> list[tuple[Node, int]] | None:
    """Follow "``start`` waits for a lock held by ``t``, which waits for ..." back to ``start``.

    Returns the (waiter, lock) pairs of the cycle in order, or None if the chain ends (someone
    holds nothing awaited, or waits for a lock nobody holds) or loops without ``start``.
    """
    chain: list[tuple[Node, int]] = []
    visited: set[Node] = set()
    node = start
    while node not in visited:
        visited.add(node)
        lock = waits_for.get(node)
        if lock is None:
            return None
        chain.append((node, lock))
        owner = holder.get(lock)
        if owner is None:
            return None
        if owner == start:
            return chain
        node = owner
    return None
