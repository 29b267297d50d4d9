"""Properties of plans over random ticket graphs (hypothesis), checked against references."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import networkx as nx  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sage_tasks.core.index import TICKET_ID_RE, IndexDocument
from sage_tasks.core.plan import Plan, build_plan
from sage_tasks.core.shape import _fast, _slow, check_tickets
from sage_tasks.errors import IndexValidationError

PRIORITIES = ["P0", "P1", "P2", "P3"]
RANK = {p: i for i, p in enumerate(PRIORITIES)}
FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def dags(draw: st.DrawFn, states: bool = False, estimates: bool = False) -> list[dict[str, Any]]:
    """Tickets whose dependencies form a DAG, listed in random order."""
    n = draw(st.integers(0, 30))
    prefixes = draw(
        st.lists(st.sampled_from(["T-", "a", "Z9.", "x_y-", "10"]), min_size=n, max_size=n)
    )
    ids = [f"{prefix}{i}" for i, prefix in enumerate(prefixes)]
    tickets = []
    for i, tid in enumerate(ids):
        deps = draw(st.lists(st.sampled_from(ids[:i]), max_size=4, unique=True)) if i else []
        ticket: dict[str, Any] = {
            "id": tid,
            "dependencies": deps,
            "run": "true",
            "priority": draw(st.sampled_from(PRIORITIES)),
        }
        if states:
            ticket["state"] = draw(
                st.sampled_from(["UNPROCESSED"] * 4 + ["IN_PROGRESS", "COMPLETED", "DEFERRED"])
            )
        if estimates and draw(st.booleans()):
            ticket["estimate"] = draw(st.integers(1, 100))
        tickets.append(ticket)
    return draw(st.permutations(tickets))


def plan_of(tickets: list[dict[str, Any]], **kwargs: Any) -> Plan:
    return build_plan(IndexDocument.loads(json.dumps({"tickets": tickets})), **kwargs)


def reference_selection(tickets: list[dict[str, Any]], retry: bool) -> tuple[set[str], set[str]]:
    """(to run, blocked) straight from the design's words, by recursion."""
    by_id = {t["id"]: t for t in tickets}
    runs = {"UNPROCESSED", "IN_PROGRESS"} | ({"DEFERRED"} if retry else set())

    def selected(tid: str) -> bool:
        return by_id[tid].get("state", "UNPROCESSED") in runs

    def blocked(tid: str) -> bool:
        for d in by_id[tid]["dependencies"]:
            state = by_id[d].get("state", "UNPROCESSED")
            if state == "DEFERRED" and not retry:
                return True
            if selected(d) and blocked(d):
                return True
        return False

    chosen = {t["id"] for t in tickets if selected(t["id"])}
    stuck = {tid for tid in chosen if blocked(tid)}
    return chosen - stuck, stuck


@FAST
@given(dags(states=True), st.booleans(), st.one_of(st.none(), st.integers(1, 5)))
def test_plans_of_random_graphs_keep_every_promise(
    tickets: list[dict[str, Any]], retry: bool, parallel: int | None
) -> None:
    plan = plan_of(tickets, retry_deferred=retry, parallel=parallel)
    to_run, blocked = reference_selection(tickets, retry)
    by_id = {t["id"]: t for t in tickets}
    flat = [tid for batch in plan.batches for tid in batch]

    # every ticket to run appears exactly once; the blocked ones never
    assert sorted(flat) == sorted(to_run)
    assert set(plan.blocked) == blocked
    assert plan.to_run == len(to_run) and plan.tickets == len(tickets)
    # groups never exceed N, and cut the levels in order
    if parallel is not None:
        assert all(1 <= len(b) <= parallel for b in plan.batches)
    regrouped: dict[int, list[str]] = {}
    for batch, number in zip(plan.batches, plan.batch_levels, strict=True):
        regrouped.setdefault(number, []).extend(batch)
    assert [regrouped[n] for n in sorted(regrouped)] == plan.levels
    # each level is sorted by priority then id
    for level in plan.levels:
        keys = [(RANK[by_id[tid]["priority"]], tid) for tid in level]
        assert keys == sorted(keys)
    # every dependency to run sits in an earlier batch, and each level is minimal
    where = {tid: n for n, level in enumerate(plan.levels, 1) for tid in level}
    batch_of = plan.batch_of
    for tid in flat:
        run_deps = [d for d in by_id[tid]["dependencies"] if d in to_run]
        assert all(batch_of[d] < batch_of[tid] for d in run_deps)
        assert where[tid] == 1 + max((where[d] for d in run_deps), default=0)
        assert sorted(plan.deps[tid]) == sorted(run_deps)
    # the critical path is a real chain, as long as there are levels
    path = plan.critical_path
    assert len(path) == len(plan.levels)
    assert all(a in by_id[b]["dependencies"] for a, b in pairwise(path))
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


@FAST
@given(dags(estimates=True))
def test_the_weighted_critical_path_is_the_heaviest_chain(tickets: list[dict[str, Any]]) -> None:
    plan = plan_of(tickets)
    by_id = {t["id"]: t for t in tickets}
    known = [t["estimate"] for t in tickets if "estimate" in t]
    if not known:
        assert plan.critical_path_seconds is None
        return
    mean = sum(known) / len(known)
    weight = {t["id"]: float(t.get("estimate", mean)) for t in tickets}
    graph = nx.DiGraph()
    graph.add_nodes_from(by_id)
    graph.add_edges_from((d, t["id"]) for t in tickets for d in t["dependencies"])
    heaviest: dict[str, float] = {}
    for tid in nx.topological_sort(graph):
        before = [heaviest[d] for d in by_id[tid]["dependencies"]]
        heaviest[tid] = weight[tid] + max(before, default=0.0)
    path = plan.critical_path
    assert all(a in by_id[b]["dependencies"] for a, b in pairwise(path))
    assert plan.critical_path_seconds is not None
    assert abs(plan.critical_path_seconds - max(heaviest.values())) < 1e-6
    assert abs(sum(weight[t] for t in path) - plan.critical_path_seconds) < 1e-6


@FAST
@given(dags())
def test_levels_are_the_topological_generations_when_everything_runs(
    tickets: list[dict[str, Any]],
) -> None:
    graph = nx.DiGraph()
    graph.add_nodes_from(t["id"] for t in tickets)
    graph.add_edges_from((d, t["id"]) for t in tickets for d in t["dependencies"])
    generations = [sorted(g) for g in nx.topological_generations(graph)]
    assert [sorted(level) for level in plan_of(tickets).levels] == generations


@st.composite
def digraphs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Tickets with arbitrary dependencies among themselves: cycles welcome."""
    n = draw(st.integers(1, 12))
    ids = [f"T{i}" for i in range(n)]
    return [
        {"id": tid, "run": "x", "dependencies": draw(st.lists(st.sampled_from(ids), max_size=3))}
        for tid in ids
    ]


@settings(max_examples=300, deadline=None)
@given(digraphs())
def test_every_ticket_on_a_cycle_is_named_and_no_other(tickets: list[dict[str, Any]]) -> None:
    graph = nx.DiGraph()
    graph.add_nodes_from(t["id"] for t in tickets)
    graph.add_edges_from((t["id"], d) for t in tickets for d in t["dependencies"])
    on_cycles = {
        v for comp in nx.strongly_connected_components(graph) if len(comp) > 1 for v in comp
    }
    selfish = {t["id"] for t in tickets if t["id"] in t["dependencies"]}
    try:
        plan_of(tickets)
    except IndexValidationError as exc:
        cycles = [p for p in exc.problems if p.message.startswith("cycle: ")]
        selves = {p.tickets[0] for p in exc.problems if p.message.endswith("depends on itself")}
    else:
        cycles, selves = [], set()
    assert {tid for p in cycles for tid in p.tickets} == on_cycles
    assert selves == selfish
    for p in cycles:
        path = p.message.removeprefix("cycle: ").split(" -> ")
        assert path[0] == path[-1] and len(set(path[:-1])) == len(path) - 1
        assert all(graph.has_edge(a, b) for a, b in pairwise(path))


@FAST
@given(dags(states=True, estimates=True))
def test_the_fast_and_the_careful_check_build_the_same_graph(
    tickets: list[dict[str, Any]],
) -> None:
    items = json.loads(json.dumps(tickets))
    fast = _fast(items)
    assert fast is not None
    slow = _slow(items)
    assert not slow.shape and not slow.semantic
    for column in ("ids", "index", "states", "priorities", "runs", "estimates", "deps"):
        assert getattr(fast.graph, column) == getattr(slow.graph, column), column


@FAST
@given(st.lists(st.text(min_size=0, max_size=8), min_size=1, max_size=6, unique=True))
def test_any_id_the_pattern_refuses_is_reported(ids: list[str]) -> None:
    checked = check_tickets([{"id": tid, "run": "x"} for tid in ids])
    bad = {tid for tid in ids if TICKET_ID_RE.match(tid) is None}
    reported = [p for p in checked.semantic if "invalid id" in p.message]
    assert len(reported) == len(bad)
