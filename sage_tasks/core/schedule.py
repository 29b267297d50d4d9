"""Estimated makespans of the two schedules, and the bound no schedule beats.

- *levels*: the groups one after another, each on ``slots`` workers taking
  the next ticket when free (a group ends when its last ticket does);
- *eager*: list scheduling, as ``--schedule eager`` runs: whenever a slot is
  free, the most urgent ticket whose dependencies are done and whose paths
  overlap no ticket in flight starts;
- the lower bound: max(critical path, total work / slots).

Tickets are numbers; ``weights`` gives each one's seconds (or 1 per ticket
when nothing is estimated). Celery's and the commit queue's own overhead is
not modelled.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sage_tasks.core.graph import TicketGraph
from sage_tasks.core.stats import makespan


@dataclass(frozen=True, slots=True)
class ScheduleEstimate:
    """What ``--dry-run`` shows of both schedules."""

    #: tickets in flight at once the estimate assumes (``--parallel`` N, else recommended)
    slots: int
    #: "seconds" with estimates, "steps" (one per ticket) without
    unit: str
    levels: float
    eager: float
    #: max(critical path, total work / slots)
    lower_bound: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScheduleEstimate:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def estimate_schedules(
    graph: TicketGraph,
    run: Sequence[int],
    run_deps: Sequence[Sequence[int]],
    groups: Sequence[Sequence[int]],
    weights: Sequence[float] | None,
    path: Sequence[int],
    slots: int,
    apart: Mapping[int, set[int]],
) -> ScheduleEstimate:
    """Both schedules' makespans on ``slots`` slots (in steps when nothing is estimated).

    ``run_deps[v]`` lists ticket ``v``'s dependencies among ``run``; ``groups``
    are the plan's batches; ``path`` its critical path; ``apart`` the tickets
    whose paths overlap.
    """
    w = weights if weights is not None else [1.0] * len(graph.ids)
    rank = urgency_order(run, run_deps, w, graph.priorities, graph.ids)
    eager = eager_makespan(rank, run_deps, w, slots, {v: list(o) for v, o in apart.items()})
    return ScheduleEstimate(
        slots=slots,
        unit="seconds" if weights is not None else "steps",
        levels=round(levels_makespan(groups, w, slots), 3),
        eager=round(eager, 3),
        lower_bound=round(lower_bound([w[v] for v in run], sum(w[v] for v in path), slots), 3),
    )


def levels_makespan(groups: Sequence[Sequence[int]], weights: Sequence[float], slots: int) -> float:
    """The groups one after another, each on ``slots`` workers."""
    return sum(makespan([weights[v] for v in g], slots) for g in groups)


def eager_makespan(
    rank: Sequence[int],
    deps: Sequence[Sequence[int]],
    weights: Sequence[float],
    slots: int,
    overlaps: Mapping[int, Sequence[int]] | None = None,
) -> float:
    """List scheduling of ``rank`` (most urgent first) on ``slots`` slots.

    Tickets are numbered below ``len(weights)``; ``deps[v]`` holds ticket
    ``v``'s dependencies among those in ``rank`` (each once), ``overlaps`` the
    tickets it may not run beside.
    """
    n = len(weights)
    place = [0] * n
    pending = [0] * n
    dependents: list[list[int]] = [[] for _ in range(n)]
    for p, v in enumerate(rank):
        place[v] = p
        ds = deps[v]
        pending[v] = len(ds)
        for d in ds:
            dependents[d].append(v)
    ready = [p for p, v in enumerate(rank) if not pending[v]]  # sorted: a heap already
    if not overlaps:
        return _list_schedule(rank, ready, place, pending, dependents, weights, slots)
    running: list[tuple[float, int]] = []
    inflight: set[int] = set()
    push, pop = heapq.heappush, heapq.heappop
    now = 0.0
    for _ in range(len(rank)):
        passed: list[int] = []
        while ready and len(inflight) < slots:
            v = rank[pop(ready)]
            if any(o in inflight for o in overlaps.get(v, ())):
                passed.append(place[v])
                continue
            inflight.add(v)
            push(running, (now + weights[v], v))
        for p in passed:
            push(ready, p)
        if not running:  # only possible when deps name a ticket outside ``rank``
            break
        now, v = pop(running)
        inflight.discard(v)
        for w in dependents[v]:
            pending[w] -= 1
            if not pending[w]:
                push(ready, place[w])
    return now


def _list_schedule(
    rank: Sequence[int],
    ready: list[int],
    place: list[int],
    pending: list[int],
    dependents: list[list[int]],
    weights: Sequence[float],
    slots: int,
) -> float:
    """:func:`eager_makespan` when no paths overlap: the same schedule, a counter for a set."""
    running: list[tuple[float, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    busy = 0
    now = 0.0
    for _ in range(len(rank)):
        while ready and busy < slots:
            v = rank[pop(ready)]
            busy += 1
            push(running, (now + weights[v], v))
        if not running:  # only possible when deps name a ticket outside ``rank``
            break
        now, v = pop(running)
        busy -= 1
        for w in dependents[v]:
            pending[w] -= 1
            if not pending[w]:
                push(ready, place[w])
    return now


def urgency_order(
    run: Sequence[int],
    deps: Sequence[Sequence[int]],
    weights: Sequence[float],
    priorities: Sequence[int],
    ids: Sequence[str],
) -> list[int]:
    """The eager schedule's order among ready tickets: priority, then longest way to the end.

    A ticket's way to the end is its own weight plus the heaviest chain of
    tickets that depend on it (HLFET): starting the tickets that hold up the
    most work first is what brings list scheduling close to the bound. Ties
    go to the id. ``deps[v]`` lists ``v``'s dependencies among ``run``.
    """
    n = len(ids)
    dependents: list[list[int]] = [[] for _ in range(n)]
    for v in run:
        for d in deps[v]:
            dependents[d].append(v)
    bottom = [0.0] * n
    for v in topological(run, deps, dependents)[::-1]:
        below = dependents[v]
        bottom[v] = weights[v] + (max([bottom[w] for w in below]) if below else 0.0)
    order = sorted(run, key=ids.__getitem__)
    order.sort(key=bottom.__getitem__, reverse=True)  # stable: ties keep the id order
    order.sort(key=priorities.__getitem__)  # stable: priority, way to the end, id
    return order


def topological(
    run: Sequence[int],
    deps: Sequence[Sequence[int]],
    dependents: Sequence[Sequence[int]] | None = None,
) -> list[int]:
    """``run`` with every ticket after its dependencies (``deps`` among ``run``, acyclic).

    ``dependents[v]``, the tickets of ``run`` that depend on ``v``, is worked
    out from ``deps`` unless the caller has it.
    """
    if dependents is None:
        found: dict[int, list[int]] = {}
        for v in run:
            for d in deps[v]:
                found.setdefault(d, []).append(v)
        dependents = [found.get(v, []) for v in range(max(run, default=-1) + 1)]
    pending = {v: len(deps[v]) for v in run}
    out = [v for v in run if not pending[v]]
    for v in out:  # grows while it is read
        for w in dependents[v]:
            pending[w] -= 1
            if not pending[w]:
                out.append(w)
    return out


def lower_bound(work: Sequence[float], critical: float, slots: int) -> float:
    """No schedule on ``slots`` slots ends before this."""
    return max(critical, sum(work) / slots) if work else 0.0
