"""Tickets kept apart by their ``paths``, in the plan.

Which tickets to run overlap (see :mod:`sage_tasks.core.paths`), how a level
is split so that no two of them share a batch, and which of those pairs
actually cost parallelism (no dependency orders them anyway): what
``--dry-run`` shows as work serialized by paths.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage_tasks.core.graph import TicketGraph
from sage_tasks.core.paths import overlapping


def path_overlaps(graph: TicketGraph, run: Sequence[int]) -> dict[int, set[int]]:
    """Ticket to run -> the tickets to run whose paths overlap its own."""
    paths = graph.paths
    if not paths:
        return {}
    ids, where = graph.ids, graph.index
    named = {ids[v]: paths[v] for v in run if v in paths}
    return {where[t]: {where[o] for o in os} for t, os in overlapping(named).items()}


def first_fit(bucket: list[int], step: int, apart: dict[int, set[int]]) -> list[list[int]]:
    """Groups of at most ``step`` in ``bucket``'s order, no two overlapping tickets in one.

    Each ticket joins the first group with room and no overlap; without
    overlaps that is the plain split into consecutive groups of ``step``.
    """
    groups: list[list[int]] = []
    for v in bucket:
        clash = apart.get(v, set())
        for g in groups:
            if len(g) < step and clash.isdisjoint(g):
                g.append(v)
                break
        else:
            groups.append([v])
    return groups


def serialized_pairs(
    graph: TicketGraph, run_deps: Sequence[Sequence[int]], apart: dict[int, set[int]]
) -> list[list[str]]:
    """Overlapping pairs (by id, sorted) that no chain of dependencies puts in order anyway.

    ``run_deps[v]`` lists ticket ``v``'s dependencies among the tickets to run.
    """
    ids, where = graph.ids, graph.index
    above: dict[int, set[int]] = {}

    def ancestors(v: int) -> set[int]:
        if v not in above:
            seen: set[int] = set()
            todo = list(run_deps[v])
            while todo:
                d = todo.pop()
                if d not in seen:
                    seen.add(d)
                    todo += run_deps[d]
            above[v] = seen
        return above[v]

    pairs = sorted({tuple(sorted((ids[a], ids[b]))) for a, bs in apart.items() for b in bs})
    return [
        [a, b]
        for a, b in pairs
        if where[a] not in ancestors(where[b]) and where[b] not in ancestors(where[a])
    ]
