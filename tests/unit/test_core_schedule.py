"""The schedule estimates: both makespans never beat the bound; eager with room is the path."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sage_tasks.core.index import IndexDocument
from sage_tasks.core.plan import build_plan, eager_order
from sage_tasks.core.schedule import (
    eager_makespan,
    levels_makespan,
    lower_bound,
    steps_by_level,
    topological,
    urgency_order,
)


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[list[int]], list[float]]:
    n = draw(st.integers(1, 14))
    deps = [
        sorted(set(draw(st.lists(st.integers(0, v - 1), max_size=3)))) if v else []
        for v in range(n)
    ]
    weights = [draw(st.floats(0.1, 5.0)) for _ in range(n)]
    return deps, weights


def critical(deps: list[list[int]], weights: list[float]) -> float:
    finish: list[float] = []
    for v, ds in enumerate(deps):
        finish.append(max((finish[d] for d in ds), default=0.0) + weights[v])
    return max(finish)


@settings(max_examples=200, deadline=None)
@given(dags(), st.integers(1, 5))
def test_no_schedule_beats_the_bound(dag: tuple[list[list[int]], list[float]], slots: int) -> None:
    deps, weights = dag
    run = list(range(len(deps)))
    bound = lower_bound(weights, critical(deps, weights), slots)
    rank = urgency_order(run, deps, weights, [2] * len(run), [f"T{v:02d}" for v in run])
    assert eager_makespan(rank, deps, weights, slots) >= bound - 1e-9
    level = [0] * len(deps)
    for v, ds in enumerate(deps):
        level[v] = max((level[d] + 1 for d in ds), default=0)
    groups = [[v for v in run if level[v] == n] for n in range(max(level) + 1)]
    assert levels_makespan(groups, weights, slots) >= bound - 1e-9


@settings(max_examples=100, deadline=None)
@given(dags())
def test_eager_with_a_slot_for_every_ticket_takes_the_critical_path(
    dag: tuple[list[list[int]], list[float]],
) -> None:
    deps, weights = dag
    run = list(range(len(deps)))
    rank = topological(run, deps)
    assert abs(eager_makespan(rank, deps, weights, len(run)) - critical(deps, weights)) < 1e-9


@settings(max_examples=200, deadline=None)
@given(dags(), st.integers(1, 8))
def test_one_step_a_ticket_with_every_level_in_its_slots_ends_after_one_step_a_level(
    dag: tuple[list[list[int]], list[float]], slots: int
) -> None:
    deps, _ = dag
    run = list(range(len(deps)))
    level = [0] * len(deps)
    for v, ds in enumerate(deps):
        level[v] = max((level[d] + 1 for d in ds), default=0)
    levels = [[v for v in run if level[v] == n] for n in range(max(level) + 1)]
    steps = [1.0] * len(run)
    rank = urgency_order(run, deps, steps, [2] * len(run), [f"T{v:02d}" for v in run])
    simulated = eager_makespan(rank, deps, steps, slots)
    fits = steps_by_level(None, {}, levels, slots)
    assert fits == (max(map(len, levels)) <= slots)
    if fits:
        assert simulated == float(len(levels))
    assert not steps_by_level(steps, {}, levels, len(run))  # estimated: simulate
    assert not steps_by_level(None, {0: {1}}, levels, len(run))  # paths apart: simulate


def test_overlapping_tickets_never_run_side_by_side() -> None:
    # two independent tickets of 2 s that overlap: one after the other
    assert eager_makespan([0, 1], [[], []], [2.0, 2.0], 4, {0: [1], 1: [0]}) == 4.0
    assert eager_makespan([0, 1], [[], []], [2.0, 2.0], 4) == 2.0


def test_the_eager_order_is_priority_then_the_work_waiting_then_id() -> None:
    tickets = [
        {"id": "A", "run": "true", "priority": "P1", "estimate": 1},
        {"id": "B", "run": "true", "priority": "P1", "estimate": 1},
        {"id": "C", "run": "true", "priority": "P1", "estimate": 1, "dependencies": ["B"]},
        {"id": "Z", "run": "true", "priority": "P0", "estimate": 1},
    ]
    doc = IndexDocument.loads(json.dumps({"tickets": tickets}))
    plan = build_plan(doc, schedules=True)
    assert eager_order(doc, plan) == ["Z", "B", "A", "C"]
    assert plan.schedules is not None and plan.schedules.eager <= plan.schedules.levels
    assert plan.to_json()["schedules"]["lower_bound"] == 2.0
