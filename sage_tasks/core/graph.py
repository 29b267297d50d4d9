"""The ticket graph in columns, and the graph algorithms the plan needs.

Tickets are numbered by their position in the index; every column below is a
list indexed by that number, and the edges are two flat lists of ints.
Keeping the graph as plain lists (rather than objects or a graph library)
lets most of the work run inside C loops (``map``, ``dict``, ``zip``), which
is what makes a 100k-ticket plan take well under a second.

An edge ``v -> d`` means "ticket ``v`` waits for ticket ``d``"; a topological
order therefore lists every dependency before its dependents. The edges are
the union of what a ticket's ``dependencies`` and ``blockedBy`` name and of
every ticket whose ``blocks`` names it (Sage schema 2.2.0, see
:mod:`sage_tasks.core.links`): everything that plans, schedules, blocks or
orders commits reads them from here, so no consumer sees one kind only.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, islice

#: state codes, in the order of :class:`sage_tasks.core.index.State`
UNPROCESSED, IN_PROGRESS, COMPLETED, DEFERRED = 0, 1, 2, 3
STATE_NAMES = ("UNPROCESSED", "IN_PROGRESS", "COMPLETED", "DEFERRED")
STATE_CODES = {name: code for code, name in enumerate(STATE_NAMES)}
PRIORITY_NAMES = ("P0", "P1", "P2", "P3")
PRIORITY_CODES = {name: code for code, name in enumerate(PRIORITY_NAMES)}


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small containers.

    Parsing and planning 100k tickets allocates a few hundred thousand lists
    and dicts, none of them in reference cycles; the collector's repeated
    scans of that growing heap would otherwise more than double the time
    taken. On the way out the new objects are moved straight to the oldest
    generation (``freeze`` then ``unfreeze``), so the young-generation pass
    that would follow does not walk them all once more; they are still freed
    by reference counting, and still scanned by full collections. (Skipped
    when the process keeps objects frozen on purpose, e.g. before a fork.)
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if not gc.get_freeze_count():
                gc.freeze()
                gc.unfreeze()
            gc.enable()


@dataclass(slots=True, eq=False)
class TicketGraph:
    """The tickets of an index as parallel columns, one slot per index entry.

    A slot whose entry is unusable (not an object, no valid id, a duplicate)
    keeps a placeholder name and no edges; an index with such a slot never
    reaches planning, but the rest of the graph can still be checked.
    """

    ids: list[str] = field(default_factory=list)
    #: id -> slot of its first occurrence
    index: dict[str, int] = field(default_factory=dict)
    states: list[int] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    #: the ``run`` command when it is a string, else None
    runs: list[str | None] = field(default_factory=list)
    #: seconds, when the ticket has a readable estimate
    estimates: list[float | None] = field(default_factory=list)
    #: each ticket's execution edges by name: its known ``dependencies`` as written
    #: (unknown ids dropped; an id may repeat, and a self dependency stays when the
    #: fast check built the graph), then what ``blockedBy`` and others' ``blocks``
    #: add (each edge once)
    dep_names: list[list[str]] = field(default_factory=list)
    #: each ticket's dependencies as slots, in the order of ``dep_names``
    deps: list[list[int]] = field(default_factory=list)
    #: slot -> its ``paths`` globs, for the tickets that declare any
    paths: dict[int, list[str]] = field(default_factory=dict)
    #: slot -> its own ``dependencies`` (known ids), for the tickets whose ``dep_names``
    #: gained edges from ``blockedBy`` or others' ``blocks``
    own_deps: dict[int, list[str]] = field(default_factory=dict)
    #: slot -> the known ids its ``blockedBy`` names, for the tickets that have that list
    blocked_by: dict[int, list[str]] = field(default_factory=dict)
    #: slot -> the known ids its ``blocks`` names, for the tickets that have that list
    blocks: dict[int, list[str]] = field(default_factory=dict)
    #: slot -> its ``parent``'s slot, for the tickets whose parent is a known other ticket
    parents: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def link(self) -> None:
        """Fill ``deps`` from ``dep_names``; raises KeyError for a name not in ``index``."""
        names = self.dep_names
        flat = iter(list(map(self.index.__getitem__, chain.from_iterable(names))))
        self.deps = [list(islice(flat, n)) for n in map(len, names)]

    def edge_field(self, v: int, d: int) -> str:
        """The field the edge ``v -> d`` comes from: ``"dependencies"`` when ``v``'s names
        ``d``, else ``"blockedBy"`` (``v``'s names ``d``) or ``"blocks"`` (``d``'s names ``v``)."""
        own = self.own_deps.get(v)
        name = self.ids[d]
        if own is None or name in own:
            return "dependencies"
        return "blockedBy" if name in self.blocked_by.get(v, ()) else "blocks"

    def has_run(self, v: int) -> bool:
        """True when ticket ``v`` has a non-blank ``run`` command."""
        run = self.runs[v]
        return run is not None and not run.isspace() and run != ""

    def dependents(self) -> list[list[int]]:
        """The reverse edges: for each slot, the slots that depend on it."""
        rev: list[list[int]] = [[] for _ in self.ids]
        for v, ds in enumerate(self.deps):
            for d in ds:
                rev[d].append(v)
        return rev


def topological_order(graph: TicketGraph) -> tuple[list[int], list[int]]:
    """Kahn's algorithm: ``(order, left)``.

    ``order`` lists every node whose dependencies can all be ordered, each
    after its dependencies; ``left`` holds the rest (nodes on a cycle or
    downstream of one), empty for an acyclic graph.
    """
    rev = graph.dependents()
    pending = list(map(len, graph.deps))
    order = [v for v, p in enumerate(pending) if not p]
    for v in order:  # ``order`` doubles as the queue
        for u in rev[v]:
            pending[u] -= 1
            if not pending[u]:
                order.append(u)
    if len(order) == len(pending):
        return order, []
    return order, [v for v, p in enumerate(pending) if p]


def strongly_connected_components(deps: list[list[int]], nodes: list[int]) -> list[list[int]]:
    """Tarjan's algorithm, iterative, over the subgraph induced by ``nodes``.

    Returns the components with more than one node, or with a self edge;
    each component is sorted by node number, the list by first node.
    """
    inside = set(nodes)
    number: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    found: list[list[int]] = []
    for root in nodes:
        if root in number:
            continue
        number[root] = low[root] = len(number)
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[int, int]] = [(root, 0)]
        while work:
            v, i = work[-1]
            ds = deps[v]
            if i < len(ds):
                work[-1] = (v, i + 1)
                w = ds[i]
                if w not in inside:
                    continue
                if w not in number:
                    number[w] = low[w] = len(number)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, 0))
                elif w in on_stack and number[w] < low[v]:
                    low[v] = number[w]
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == number[v]:
                comp: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in deps[v]:
                    found.append(sorted(comp))
    return sorted(found)


def shortest_cycle_through(deps: list[list[int]], start: int, within: set[int]) -> list[int]:
    """The shortest cycle from ``start`` back to itself inside ``within``.

    Breadth-first along dependency edges; returns the nodes on the cycle
    beginning with ``start`` (the closing ``start`` not repeated), or ``[]``
    when ``start`` lies on no cycle in ``within``.
    """
    parent: dict[int, int] = {start: start}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in deps[v]:
            if w == v:  # a self dependency is reported on its own
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                path.reverse()
                return path
            if w in within and w not in parent:
                parent[w] = v
                queue.append(w)
    return []


def cycles_covering(
    deps: list[list[int]], component: list[int], names: list[str], limit: int
) -> tuple[list[list[int]], list[int]]:
    """Elementary cycles that together name every node of ``component``.

    Greedy: take the uncovered node with the smallest name, add the shortest
    cycle through it, repeat. Stops after ``limit`` cycles and returns
    ``(cycles, uncovered)``.
    """
    within = set(component)
    todo = sorted(component, key=names.__getitem__)
    covered: set[int] = set()
    cycles: list[list[int]] = []
    for node in todo:
        if node in covered:
            continue
        if len(cycles) >= limit:
            break
        cycle = shortest_cycle_through(deps, node, within)
        if cycle:  # always, inside a strongly connected component
            cycles.append(cycle)
            covered.update(cycle)
    return cycles, [v for v in todo if v not in covered]
