"""Sage schema 2.2.0's links between tickets: which ones order the run, which only inform.

Upstream Sage-Dev's enhanced dependencies give a ticket more ways to name
others than its ``dependencies``:

* *execution edges*: ``blockedBy`` (ids this ticket waits for) and ``blocks``
  (ids that wait for this ticket). A ticket waits for the union of its
  ``dependencies``, its ``blockedBy`` and every ticket whose ``blocks`` names
  it; an edge named twice (A ``blocks`` B and B ``blockedBy`` A) counts once.
  :func:`merge_links` folds them into the ticket graph's edges, so every part
  of sage-tasks (levels, eager schedule, blocking, critical path, commit
  order, report) reads one set of edges.
* *informational links*: ``relatedTo`` (ids), ``discoveredFrom`` (an id, or
  ids) and ``parent`` (an id). They order nothing; an id in them that names
  no ticket is a warning, as upstream's validator flags orphans. A ticket
  whose parent (or a parent's parent) is DEFERRED and not re-run is held
  back: upstream forbids completing a child of a DEFERRED parent
  (:func:`parent_holds`).

A ``null`` or missing list means an empty one. sage-tasks only reads these
fields: it never writes them, nor "fixes" one side of a reciprocal pair.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from itertools import chain, compress, repeat
from operator import add, setitem
from typing import Any

from sage_tasks.core.columns import Columns
from sage_tasks.core.graph import TicketGraph
from sage_tasks.errors import Problem

DEPENDENCIES = "dependencies"
BLOCKED_BY = "blockedBy"
BLOCKS = "blocks"
#: the fields whose ids order the run, in the order an edge's origin is told
EXECUTION_FIELDS = (DEPENDENCIES, BLOCKED_BY, BLOCKS)
RELATED_TO = "relatedTo"
DISCOVERED_FROM = "discoveredFrom"
PARENT = "parent"
#: the fields whose ids only inform (``parent`` also holds back children of DEFERRED parents)
INFORMATIONAL_FIELDS = (RELATED_TO, DISCOVERED_FROM, PARENT)
#: informational fields that hold a list of ids (the others hold one id, or a list)
_LIST_FIELDS = frozenset({RELATED_TO})
#: warnings shown one by one before the rest are only counted
SHOWN_WARNINGS = 20


def merge_links(
    graph: TicketGraph, blocked_by: dict[int, list[str]], blocks: dict[int, list[str]]
) -> None:
    """Add the ``blockedBy`` and reverse ``blocks`` edges to ``graph.dep_names``.

    ``blocked_by`` and ``blocks`` map a slot to the ids its field names, all
    known and none its own. A ticket's own ``dependencies`` keep their order;
    the new names follow. A ticket that gains edges gets a new list, its own
    one is kept in ``graph.own_deps`` (the index's lists are never changed).
    Call before ``graph.link()``.
    """
    graph.blocked_by = blocked_by
    graph.blocks = blocks
    if not blocked_by and not blocks:
        return
    ids, index, names = graph.ids, graph.index, graph.dep_names
    # the loops below run over every edge of a 100k-ticket index, so they are C loops
    # (map, compress, chain) but for the one that groups ``blocks`` by the ticket named
    waiters = list(compress(blocked_by, blocked_by.values()))
    blockers = list(compress(blocks, blocks.values()))
    lists = list(map(blocks.__getitem__, blockers))
    owners = chain.from_iterable(map(repeat, map(ids.__getitem__, blockers), map(len, lists)))
    extra: defaultdict[int, list[str]] = defaultdict(list)
    for w, me in zip(map(index.__getitem__, chain.from_iterable(lists)), owners, strict=True):
        extra[w].append(me)
    gained = set(waiters).union(extra)
    graph.own_deps.update(zip(gained, map(names.__getitem__, gained), strict=True))
    # an edge named twice stays twice here, as a dependency listed twice does: the graph
    # algorithms do not mind, and everything that names edges names each once
    _extend(names, waiters, list(map(blocked_by.__getitem__, waiters)))
    _extend(names, list(extra), list(extra.values()))


def _extend(names: list[list[str]], slots: list[int], more: list[list[str]]) -> None:
    """``names[v] = names[v] + more[i]`` for each ``v = slots[i]`` (new lists, in C loops)."""
    grown = map(add, map(names.__getitem__, slots), more)
    deque(map(setitem, repeat(names), slots, grown), maxlen=0)


def link_problem(field: str, value: object) -> str | None:
    """What is wrong with an execution-edge field's value (None: it is a list of strings)."""
    if value is None or (type(value) is list and all(type(d) is str for d in value)):
        return None
    return f"'{field}' must be a list of ticket ids, got {show_value(value)}"


def read_informational(
    graph: TicketGraph, related: list[Any], discovered: list[Any], parents: list[Any]
) -> list[Problem]:
    """Warnings for the informational links (one value per slot, None when absent).

    Fills ``graph.parents`` with every known parent that is not the ticket itself.
    A value of the wrong shape is a warning too: it orders nothing, so the run
    can go on without it.
    """
    warnings: list[Problem] = []
    n = len(graph.ids)
    for field, column in ((RELATED_TO, related), (DISCOVERED_FROM, discovered)):
        if column.count(None) != n:
            for v, value in enumerate(column):
                if value is not None:
                    _check_ids(graph, v, field, value, warnings)
    if parents.count(None) != n:
        for v, value in enumerate(parents):
            if value is not None:
                p = _check_parent(graph, v, value, warnings)
                if p is not None:
                    graph.parents[v] = p
    return warnings


def _check_ids(
    graph: TicketGraph, v: int, field: str, value: object, warnings: list[Problem]
) -> None:
    def warn(text: str) -> None:
        warnings.append(Problem(f"ticket {graph.ids[v]}: '{field}' {text}", (graph.ids[v],)))

    named: list[Any]
    if type(value) is list:
        named = value
    elif type(value) is str and field not in _LIST_FIELDS:
        named = [value]
    else:
        shape = "a list of ticket ids" if field in _LIST_FIELDS else "a ticket id"
        warn(f"should be {shape}, got {show_value(value)}; ignored")
        return
    for d in named:
        if type(d) is not str:
            warn(f"holds {show_value(d)}, not a ticket id; ignored")
        elif d not in graph.index:
            warn(f"names unknown ticket {show_value(d)}")


def _check_parent(graph: TicketGraph, v: int, value: object, warnings: list[Problem]) -> int | None:
    def warn(text: str) -> None:
        warnings.append(Problem(f"ticket {graph.ids[v]}: 'parent' {text}", (graph.ids[v],)))

    if type(value) is not str:
        warn(f"should be a ticket id, got {show_value(value)}; ignored")
        return None
    p = graph.index.get(value)
    if p is None:
        warn(f"names unknown ticket {show_value(value)}")
    elif p == v:
        warn("names itself; ignored")
        return None
    return p


def parent_holds(
    parents: dict[int, int], status: list[int], run: int, skipped: int
) -> dict[int, int]:
    """Tickets to run held back by their parents: slot -> the DEFERRED ancestor that holds it.

    ``status[v] == run`` for a ticket to run, ``skipped`` for a DEFERRED one
    that is not re-run. A ticket is held when its parent is skipped, or is to
    run and held itself; a COMPLETED parent ends the chain (it holds nothing,
    whatever its own parent is), as does a chain that comes back on itself.
    """
    held: dict[int, int] = {}
    free: set[int] = set()
    for start in parents:
        if status[start] != run or start in held or start in free:
            continue
        chain = [start]
        cause: int | None = None
        p = parents.get(start)
        while p is not None:
            if status[p] == skipped:
                cause = p
                break
            if status[p] != run or p in free or p in chain:
                break
            if p in held:
                cause = held[p]
                break
            chain.append(p)
            p = parents.get(p)
        if cause is None:
            free.update(chain)
        else:
            for v in chain:
                held[v] = cause
    return held


def parent_reason(graph: TicketGraph, v: int, cause: int) -> str:
    """Why ``v`` is held back by its DEFERRED ancestor ``cause`` (see :func:`parent_holds`)."""
    ids, parent = graph.ids, graph.parents[v]
    if parent == cause:
        return f"parent {ids[cause]} is DEFERRED and not retried"
    return f"parent {ids[parent]} is BLOCKED: its ancestor {ids[cause]} is DEFERRED and not retried"


@dataclass(frozen=True, slots=True)
class LinkSummary:
    """What a user checks to see their links were understood: schema and edges per field."""

    #: the index's top-level ``version`` as written (None when it has none)
    version: str | None
    #: distinct execution edges each field names, and ``total``: the distinct union
    edges: dict[str, int]
    #: informational links: ids named per field (known or not)
    informational: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "edges": self.edges, "informational": self.informational}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinkSummary:
        return cls(data.get("version"), dict(data["edges"]), dict(data.get("informational", {})))

    def describe(self) -> str:
        """One line: ``schema 2.2.0; 4 execution edges (dependencies 1, blockedBy 2, ...)``."""
        version = f"schema {self.version}" if self.version is not None else "no schema version"
        e = self.edges
        parts = [f"{f} {e[f]}" for f in EXECUTION_FIELDS if e.get(f)]
        twice = sum(e.get(f, 0) for f in EXECUTION_FIELDS) - e["total"]
        if twice:
            parts.append(f"{twice} named twice")
        edges = f"{e['total']} execution edge{'s' if e['total'] != 1 else ''}"
        line = f"{version}; {edges}" + (f" ({', '.join(parts)})" if parts else "")
        info = [f"{f} {c}" for f, c in self.informational.items() if c]
        return line + (f"; informational links: {', '.join(info)}" if info else "")


def summarize_links(graph: TicketGraph, version: object, items: list[Any]) -> LinkSummary:
    """Count the edges of ``graph`` per field (O(edges); for reports, not for planning)."""
    distinct = sum(map(len, map(set, graph.deps)))
    if graph.own_deps:
        own = [graph.own_deps.get(v, names) for v, names in enumerate(graph.dep_names)]
        own_count = sum(map(len, map(set, own)))
    else:  # no ticket gained edges from blockedBy or blocks: its names are its own
        own_count = distinct
    edges = {
        DEPENDENCIES: own_count,
        BLOCKED_BY: sum(map(len, map(set, graph.blocked_by.values()))),
        BLOCKS: sum(map(len, map(set, graph.blocks.values()))),
        "total": distinct,
    }
    column = Columns([item for item in items if type(item) is dict])
    informational = {field: _count_named(column(field)) for field in INFORMATIONAL_FIELDS}
    return LinkSummary(None if version is None else str(version), edges, informational)


def _count_named(values: list[Any]) -> int:
    """The ids a column of informational links names: a list's length, a string's one."""
    if values.count(None) == len(values):
        return 0
    return sum(len(v) if type(v) is list else 1 for v in values if type(v) in (list, str))


def warning_lines(warnings: list[Problem]) -> list[str]:
    """The warnings' messages, the first :data:`SHOWN_WARNINGS` of them and a count of the rest."""
    lines = [w.message for w in warnings[:SHOWN_WARNINGS]]
    if len(warnings) > SHOWN_WARNINGS:
        lines.append(f"... and {len(warnings) - SHOWN_WARNINGS} more")
    return lines


def own_waits(ticket: dict[str, Any]) -> list[str]:
    """The ids one ticket's own fields say it waits for: ``dependencies`` then ``blockedBy``.

    For a ticket seen alone (its prompt); the graph adds the tickets whose
    ``blocks`` name it. Values of the wrong shape are skipped.
    """
    out: dict[str, None] = {}
    for field in (DEPENDENCIES, BLOCKED_BY):
        value = ticket.get(field)
        if type(value) is list:
            out.update((d, None) for d in value if type(d) is str)
    return list(out)


def show_value(value: object) -> str:
    """A value for a one-line message: quoted, escaped, shortened."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
