"""Validation of a ticket index: every problem at once, each naming its tickets.

The per-ticket checks (shapes, ids, dependencies, estimates) are in
:mod:`sage_tasks.core.shape`; this module adds what needs the whole graph or
the run: cycles, printed as paths (``cycle: A -> B -> C -> A``, each ticket
waiting for the next), and tickets to run that have no command. A cycle may
run through any mix of edge kinds; a step that no ``dependencies`` names is
told after the path (``A -> B: 'blockedBy' of A``, ``B -> C: 'blocks' of C``).
"""

from __future__ import annotations

from sage_tasks.core.graph import (
    TicketGraph,
    cycles_covering,
    strongly_connected_components,
    topological_order,
)
from sage_tasks.core.links import BLOCKED_BY, BLOCKS
from sage_tasks.core.shape import ID_PATTERN, ID_RE, CheckedIndex, check_tickets
from sage_tasks.errors import Problem

__all__ = [
    "ID_PATTERN",
    "ID_RE",
    "CheckedIndex",
    "check_tickets",
    "command_problems",
    "cycle_problems",
    "graph_problems",
]

#: a strongly connected component up to this size has every ticket named on a cycle
FULL_CYCLE_REPORT = 50
#: cycles reported for a larger component, before one summary line
LARGE_COMPONENT_CYCLES = 10
_NAMED_IN_SUMMARY = 20


def cycle_problems(graph: TicketGraph, left: list[int]) -> list[Problem]:
    """Every cycle among ``left`` (the nodes a topological sort could not order).

    Each strongly connected component is reported as elementary cycles that
    together name all its tickets, each starting at its smallest id; a
    component larger than :data:`FULL_CYCLE_REPORT` gets
    :data:`LARGE_COMPONENT_CYCLES` cycles and one line for the rest.
    """
    names = graph.ids
    deps = graph.deps
    problems = [  # left in the graph by the fast check, which does not look for them
        Problem(f"ticket {names[v]}: depends on itself", (names[v],)) for v in left if v in deps[v]
    ]
    for comp in strongly_connected_components(deps, left):
        if len(comp) == 1:  # only a self dependency, reported above
            continue
        limit = len(comp) if len(comp) <= FULL_CYCLE_REPORT else LARGE_COMPONENT_CYCLES
        cycles, rest = cycles_covering(deps, comp, names, limit)
        for cycle in cycles:
            path = [names[v] for v in cycle]
            text = "cycle: " + " -> ".join([*path, path[0]]) + _origins(graph, cycle)
            problems.append(Problem(text, tuple(path)))
        if rest:
            shown = ", ".join(names[v] for v in rest[:_NAMED_IN_SUMMARY])
            more = len(rest) - _NAMED_IN_SUMMARY
            tail = f" and {more} more" if more > 0 else ""
            problems.append(
                Problem(
                    f"cycle: {len(rest)} more tickets on cycles with {names[cycles[0][0]]}: "
                    f"{shown}{tail}",
                    tuple(names[v] for v in rest),
                )
            )
    return problems


def _origins(graph: TicketGraph, cycle: list[int]) -> str:
    """`` (A -> B: 'blockedBy' of A; ...)`` for the steps no ``dependencies`` names."""
    if not graph.own_deps:
        return ""
    names = graph.ids
    told = []
    for v, d in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        origin = graph.edge_field(v, d)
        if origin == BLOCKED_BY:
            told.append(f"{names[v]} -> {names[d]}: '{origin}' of {names[v]}")
        elif origin == BLOCKS:
            told.append(f"{names[v]} -> {names[d]}: '{origin}' of {names[d]}")
    return f" ({'; '.join(told)})" if told else ""


def graph_problems(checked: CheckedIndex) -> list[Problem]:
    """Every problem the index has on its own: shapes, ids, dependencies, cycles."""
    _, left = topological_order(checked.graph)
    return [*checked.shape, *checked.semantic, *cycle_problems(checked.graph, left)]


def command_problems(graph: TicketGraph, selected: list[int], has_executor: bool) -> list[Problem]:
    """Tickets among ``selected`` with neither a ``run`` command nor an executor."""
    if has_executor:
        return []
    ids = graph.ids
    return [
        Problem(
            f"ticket {ids[v]}: no 'run' command and no executor (--executor or SAGE_EXECUTOR)",
            (ids[v],),
        )
        for v in selected
        if not graph.has_run(v)
    ]
