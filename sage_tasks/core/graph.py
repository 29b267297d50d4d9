"""The ticket graph in columns, and the graph algorithms the plan needs.

Tickets are numbered by their position in the index; every column below is a
list indexed by that number, and a dependency is an integer edge. Keeping the
graph as plain lists of ints (rather than objects or a graph library) is what
makes a 100k-ticket plan take well under a second.

An edge ``v -> d`` means "ticket ``v`` depends on ticket ``d``"; a topological
order therefore lists every dependency before its dependents.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

#: state codes, in the order of :class:`sage_tasks.core.index.State`
UNPROCESSED, IN_PROGRESS, COMPLETED, DEFERRED = 0, 1, 2, 3
STATE_NAMES = ("UNPROCESSED", "IN_PROGRESS", "COMPLETED", "DEFERRED")
STATE_CODES = {name: code for code, name in enumerate(STATE_NAMES)}
PRIORITY_NAMES = ("P0", "P1", "P2", "P3")
PRIORITY_CODES = {name: code for code, name in enumerate(PRIORITY_NAMES)}


@dataclass(slots=True, eq=False)
class TicketGraph:
    """The tickets of an index as parallel columns, one slot per index entry.

    A slot whose entry is unusable (not an object, no valid id, a duplicate)
    keeps a placeholder name and no edges; an index with such a slot never
    reaches planning, but the rest of the graph can still be checked.
    """

    ids: list[str] = field(default_factory=list)
    states: list[int] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    deps: list[list[int]] = field(default_factory=list)
    has_run: list[bool] = field(default_factory=list)
    estimates: list[float | None] = field(default_factory=list)
    #: id -> slot of its first occurrence
    index: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def dependents(self) -> list[list[int]]:
        """The reverse edges: for each slot, the slots that depend on it."""
        rev: list[list[int]] = [[] for _ in self.ids]
        for v, ds in enumerate(self.deps):
            for d in ds:
                rev[d].append(v)
        return rev


def topological_order(deps: list[list[int]]) -> tuple[list[int], list[int]]:
    """Kahn's algorithm: ``(order, left)``.

    ``order`` lists every node whose dependencies can all be ordered, each
    after its dependencies; ``left`` holds the rest (nodes on a cycle or
    downstream of one), empty for an acyclic graph.
    """
    n = len(deps)
    rev: list[list[int]] = [[] for _ in range(n)]
    pending = [0] * n
    for v, ds in enumerate(deps):
        if ds:
            pending[v] = len(ds)
            for d in ds:
                rev[d].append(v)
    order = [v for v in range(n) if not pending[v]]
    # ``order`` doubles as the queue: appending while iterating visits new items
    for v in order:
        for u in rev[v]:
            pending[u] -= 1
            if not pending[u]:
                order.append(u)
    if len(order) == n:
        return order, []
    return order, [v for v in range(n) if pending[v]]


def strongly_connected_components(deps: list[list[int]], nodes: list[int]) -> list[list[int]]:
    """Tarjan's algorithm, iterative, over the subgraph induced by ``nodes``.

    Returns the components with more than one node, or with a self edge;
    each component is sorted by node number.
    """
    inside = set(nodes)
    number: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    found: list[list[int]] = []
    counter = 0
    for root in nodes:
        if root in number:
            continue
        number[root] = low[root] = counter
        counter += 1
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
                    number[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, 0))
                elif w in on_stack and number[w] < low[v]:
                    low[v] = number[w]
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                if low[v] < low[parent]:
                    low[parent] = low[v]
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
    return found


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
        if not cycle:  # cannot happen inside a strongly connected component
            continue
        cycles.append(cycle)
        covered.update(cycle)
    return cycles, [v for v in todo if v not in covered]
