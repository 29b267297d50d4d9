"""Properties of schema 2.2.0 links (hypothesis): where an edge is written never matters.

Each edge "B waits for A" of a random graph is written at random as A in B's
``dependencies``, A in B's ``blockedBy``, B in A's ``blocks``, or in several of
them at once; empty lists are written at random as ``[]``, ``null`` or not at
all. The plan must be the one of the same graph with every edge in
``dependencies``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sage_tasks.core.index import IndexDocument
from sage_tasks.core.plan import Plan, build_plan
from sage_tasks.core.shape import _fast, _slow
from sage_tasks.errors import IndexValidationError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PRIORITIES = ["P0", "P1", "P2", "P3"]
STATES = ["UNPROCESSED"] * 4 + ["IN_PROGRESS", "COMPLETED", "DEFERRED"]
#: where an edge "v waits for d" is written: any non-empty mix of the three places
PLACES = [
    ("dependencies",),
    ("blockedBy",),
    ("blocks",),
    ("dependencies", "blocks"),
    ("blockedBy", "blocks"),
    ("dependencies", "blockedBy", "blocks"),
]
EMPTY: list[Any] = [[], None, "missing"]

#: ticket bodies, edges ``(v, d)`` (v waits for d), the order the index lists the tickets in
Graph = tuple[list[dict[str, Any]], list[tuple[int, int]], list[int]]


@st.composite
def graphs(draw: st.DrawFn, acyclic: bool = True) -> Graph:
    """Ticket bodies (state, priority, estimate, parent), edges, and an order to list them."""
    n = draw(st.integers(1 if not acyclic else 0, 20))
    bodies = []
    for i in range(n):
        body: dict[str, Any] = {
            "id": f"S-{i:02d}",
            "type": draw(st.sampled_from(["story", "epic", "bug"])),
            "state": draw(st.sampled_from(STATES)),
            "priority": draw(st.sampled_from(PRIORITIES)),
            "run": "true",
        }
        if draw(st.booleans()):
            body["estimate"] = draw(st.integers(1, 90))
        if i and draw(st.integers(0, 3)) == 0:
            body["parent"] = f"S-{draw(st.integers(0, n - 1)):02d}"
        bodies.append(body)
    edges: list[tuple[int, int]] = []
    for v in range(n):
        pool = list(range(v)) if acyclic else [d for d in range(n) if d != v]
        if pool:
            edges += [
                (v, d) for d in draw(st.lists(st.sampled_from(pool), max_size=3, unique=True))
            ]
    return bodies, edges, draw(st.permutations(range(n)))


def all_in_dependencies(graph: Graph) -> dict[str, Any]:
    bodies, edges, order = graph
    tickets = [dict(b, dependencies=[]) for b in bodies]
    for v, d in edges:
        tickets[v]["dependencies"].append(bodies[d]["id"])
    return {"version": "2.1.0", "tickets": [tickets[i] for i in order]}


def split(graph: Graph, draw: Callable[..., Any]) -> dict[str, Any]:
    """The same graph with each edge written in a random mix of the three fields."""
    bodies, edges, order = graph
    lists: list[dict[str, list[str]]] = [
        {"dependencies": [], "blockedBy": [], "blocks": []} for _ in bodies
    ]
    for v, d in edges:
        for place in draw(st.sampled_from(PLACES)):
            if place == "blocks":
                lists[d]["blocks"].append(bodies[v]["id"])
            else:
                lists[v][place].append(bodies[d]["id"])
    tickets = []
    for body, fields in zip(bodies, lists, strict=True):
        ticket = dict(body)
        for name, names in fields.items():
            empty = draw(st.sampled_from(EMPTY))
            if names:
                ticket[name] = names
            elif empty != "missing":
                ticket[name] = empty
        tickets.append(ticket)
    return {
        "version": "2.2.0",
        "workflow_mode": "TICKET_BASED",
        "tickets": [tickets[i] for i in order],
    }


def plan_of(data: dict[str, Any], **kwargs: Any) -> Plan:
    return build_plan(IndexDocument.loads(json.dumps(data)), has_executor=True, **kwargs)


def comparable(plan: Plan) -> dict[str, Any]:
    """The plan as JSON, each ticket's dependency list as a set (their order is the index's)."""
    data = plan.to_json()
    data["deps"] = {t: sorted(ds) for t, ds in data["deps"].items()}
    return data


@FAST
@given(graphs(), st.data(), st.booleans(), st.one_of(st.none(), st.integers(1, 4)))
def test_splitting_edges_between_the_three_fields_gives_the_same_plan(
    graph: Graph, data: st.DataObject, retry: bool, parallel: int | None
) -> None:
    plain = all_in_dependencies(graph)
    mixed = split(graph, data.draw)
    want = plan_of(plain, retry_deferred=retry, parallel=parallel, schedules=True)
    got = plan_of(mixed, retry_deferred=retry, parallel=parallel, schedules=True)
    assert comparable(got) == comparable(want)


@FAST
@given(graphs(acyclic=False), st.data())
def test_a_cycle_is_found_whichever_fields_its_edges_are_written_in(
    graph: Graph, data: st.DataObject
) -> None:
    def on_cycles(index: dict[str, Any]) -> set[str]:
        try:
            plan_of(index)
        except IndexValidationError as exc:
            messages = [p for p in exc.problems]
            assert all(p.message.startswith("cycle: ") for p in messages), messages
            return {t for p in messages for t in p.tickets}
        return set()

    plain = all_in_dependencies(graph)
    assert on_cycles(split(graph, data.draw)) == on_cycles(plain)


@FAST
@given(graphs(), st.data())
def test_the_fast_and_the_careful_check_build_the_same_links(
    graph: Graph, data: st.DataObject
) -> None:
    items = json.loads(json.dumps(split(graph, data.draw)))["tickets"]
    fast = _fast(items)
    assert fast is not None
    slow = _slow(items)
    assert not slow.shape and not slow.semantic and slow.warnings == fast.warnings
    columns = ("ids", "states", "dep_names", "deps", "own_deps", "blocked_by", "blocks", "parents")
    for column in columns:
        assert getattr(fast.graph, column) == getattr(slow.graph, column), column
