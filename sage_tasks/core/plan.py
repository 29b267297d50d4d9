"""The plan: which tickets run, in which batches, along which critical path.

:func:`build_plan` follows the design's "What a run does", steps 1 to 3:

1. *Selection*: UNPROCESSED and IN_PROGRESS tickets are to run, COMPLETED
   ones satisfy their dependents, DEFERRED ones are not re-run unless
   ``retry_deferred``. A ticket that depends, directly or through other
   tickets to run, on a DEFERRED ticket that is not re-run is *blocked*: in
   no batch; so is a ticket whose ``parent`` is such a ticket (or is held
   by its own parent), and what depends on it. Blocking never passes
   through a COMPLETED ticket. "Depends" is every execution edge of the
   graph: ``dependencies``, ``blockedBy`` and reverse ``blocks``.
2. *Validation*: every problem of the index at once (see
   :mod:`sage_tasks.core.validate`), raised as :class:`IndexValidationError`.
3. *Batches*: a ticket's level is one more than the deepest level among its
   dependencies to run; each level is sorted by priority (P0 first) then id
   and, with ``parallel`` N, split into consecutive groups of at most N.
   Tickets whose ``paths`` overlap never share a group: such a level is split
   first-fit instead (:mod:`sage_tasks.core.apart`).

The critical path is the heaviest chain of tickets to run, weighted by
their estimates (a ticket without one counts as the mean of the others), or
by count when no ticket to run has an estimate. On request the plan also
estimates both schedules' makespans (:mod:`sage_tasks.core.schedule`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import eq
from typing import Any, Literal

from sage_tasks.core.apart import first_fit, path_overlaps, serialized_pairs
from sage_tasks.core.graph import COMPLETED, TicketGraph, gc_paused, topological_order
from sage_tasks.core.index import IndexDocument
from sage_tasks.core.links import LinkSummary, parent_holds, parent_reason
from sage_tasks.core.schedule import (
    ScheduleEstimate,
    estimate_schedules,
    steps_by_level,
    urgency_order,
)
from sage_tasks.core.stats import PlanStats, auto_workers, compute_stats
from sage_tasks.core.validate import command_problems, cycle_problems, graph_problems
from sage_tasks.errors import ConfigError, IndexValidationError

Parallel = int | Literal["auto"] | None

# selection status of a ticket while planning
_RUN, _BLOCKED, _DONE, _SKIPPED = 0, 1, 2, 3


@dataclass(slots=True)
class Plan:
    """What a run will do, in the order it will do it; JSON-ready via :meth:`to_json`."""

    #: groups of ticket ids, sent one after the other
    batches: list[list[str]]
    #: the level of each group in ``batches`` (1 = no dependency to run)
    batch_levels: list[int]
    #: the tickets to run by level, each sorted by priority then id
    levels: list[list[str]]
    #: the heaviest chain of tickets to run, first to last
    critical_path: list[str]
    #: summed estimates along the critical path; None when nothing is estimated
    critical_path_seconds: float | None
    #: tickets held back by a DEFERRED ticket that is not re-run (index order)
    blocked: list[str]
    #: tickets already COMPLETED (index order)
    completed: list[str]
    #: tickets in the whole index
    tickets: int
    #: tickets in batches
    to_run: int
    #: the N of ``--parallel`` (resolved when "auto"); None without the flag
    parallel: int | None
    stats: PlanStats
    #: for each ticket to run, its dependencies that are to run too
    deps: dict[str, list[str]] = field(default_factory=dict)
    #: DEFERRED tickets that this run does not re-run (index order)
    deferred: list[str] = field(default_factory=list)
    #: estimated makespan of both schedules and the bound (None in plans stored before it)
    schedules: ScheduleEstimate | None = None
    #: ticket to run -> the tickets to run whose ``paths`` overlap its own (never in flight
    #: together: split into different batches, held back by the eager schedule)
    overlaps: dict[str, list[str]] = field(default_factory=dict)
    #: pairs of those that no dependency orders: where paths serialize work
    serialized: list[list[str]] = field(default_factory=list)
    #: blocked ticket -> why (the dependency or parent that holds it back)
    blocked_reasons: dict[str, str] = field(default_factory=dict)
    #: the index's schema version and edges per field, when the submission looked
    links: LinkSummary | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``--dry-run --json`` object; :meth:`from_json` reads it back."""
        return {
            "batches": self.batches,
            "critical_path": self.critical_path,
            "blocked": self.blocked,
            "tickets": self.tickets,
            "to_run": self.to_run,
            "parallel": self.parallel,
            "levels": self.levels,
            "batch_levels": self.batch_levels,
            "critical_path_seconds": self.critical_path_seconds,
            "completed": self.completed,
            "deferred": self.deferred,
            "stats": self.stats.to_json(),
            "deps": self.deps,
            "schedules": self.schedules.to_json() if self.schedules else None,
            "overlaps": self.overlaps,
            "serialized": self.serialized,
            "blocked_reasons": self.blocked_reasons,
            "schema": self.links.to_json() if self.links else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        """A plan from :meth:`to_json` output (as stored with a run)."""
        levels = [list(map(str, level)) for level in data["levels"]]
        batches = [list(map(str, batch)) for batch in data["batches"]]
        batch_levels = data.get("batch_levels")
        if batch_levels is None:  # derive it: each batch lies inside one level
            where = {t: n for n, level in enumerate(levels, 1) for t in level}
            batch_levels = [where[b[0]] if b else 0 for b in batches]
        return cls(
            batches=batches,
            batch_levels=[int(n) for n in batch_levels],
            levels=levels,
            critical_path=list(data["critical_path"]),
            critical_path_seconds=data.get("critical_path_seconds"),
            blocked=list(data["blocked"]),
            completed=list(data.get("completed", [])),
            tickets=int(data["tickets"]),
            to_run=int(data["to_run"]),
            parallel=data.get("parallel"),
            stats=PlanStats.from_json(data["stats"]),
            deps={k: list(v) for k, v in data.get("deps", {}).items()},
            deferred=list(data.get("deferred", [])),
            schedules=ScheduleEstimate.from_json(data["schedules"])
            if data.get("schedules")
            else None,
            overlaps={k: list(v) for k, v in data.get("overlaps", {}).items()},
            serialized=[list(p) for p in data.get("serialized", [])],
            blocked_reasons=dict(data.get("blocked_reasons") or {}),
            links=LinkSummary.from_json(data["schema"]) if data.get("schema") else None,
        )

    @property
    def batch_of(self) -> dict[str, int]:
        """Ticket id -> the number (0-based) of its batch."""
        return {t: n for n, batch in enumerate(self.batches) for t in batch}


def resolve_parallel(parallel: Parallel, cores: int | None, to_run: int) -> int | None:
    """The group size for ``parallel``; raises :class:`ConfigError` for a bad value."""
    if parallel is None:
        return None
    if parallel == "auto":
        return auto_workers(cores if cores is not None else os.cpu_count() or 1, to_run)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"--parallel must be a whole number >= 1 or 'auto', not {parallel!r}")
    return parallel


def build_plan(
    doc: IndexDocument,
    *,
    parallel: Parallel = None,
    retry_deferred: bool = False,
    has_executor: bool = False,
    cores: int | None = None,
    schedules: bool = False,
) -> Plan:
    """Validate ``doc`` and plan its run; :class:`IndexValidationError` lists every problem.

    With ``schedules`` the plan also estimates both schedules' makespans (a
    simulation: about as long again as the plan itself on 100k tickets).
    """
    if parallel is not None:
        resolve_parallel(parallel, cores, 1)  # reject a bad value before any work
    with gc_paused():
        return _build(doc, parallel, retry_deferred, has_executor, cores, schedules)


def _build(
    doc: IndexDocument,
    parallel: Parallel,
    retry_deferred: bool,
    has_executor: bool,
    cores: int | None,
    estimate: bool,
) -> Plan:
    checked = doc.checked
    graph = checked.graph
    if checked.shape:  # only for a document built without ``loads``
        raise IndexValidationError(graph_problems(checked), path=doc.source)
    problems = list(checked.semantic)
    states = graph.states
    status = list(
        map((_RUN, _RUN, _DONE, _RUN if retry_deferred else _SKIPPED).__getitem__, states)
    )
    selected = [v for v, s in enumerate(status) if s == _RUN]
    held = parent_holds(graph.parents, status, _RUN, _SKIPPED) if graph.parents else {}
    for v in held:
        status[v] = _BLOCKED
    weights = _weights(graph, selected)
    walk = _Walk(graph.deps, status, weights)
    if not walk.acyclic:
        problems += cycle_problems(graph, topological_order(graph)[1])
    problems += command_problems(graph, selected, has_executor)
    if problems:
        raise IndexValidationError(problems, path=doc.source)

    ids, prios, level = graph.ids, graph.priorities, walk.level
    run = [v for v in selected if status[v] == _RUN]
    buckets: list[list[int]] = [[] for _ in range(max(map(level.__getitem__, run), default=0))]
    for v in run:
        buckets[level[v] - 1].append(v)
    for bucket in buckets:
        bucket.sort(key=ids.__getitem__)
        bucket.sort(key=prios.__getitem__)  # stable: priority first, then id

    size = resolve_parallel(parallel, cores, len(run))
    apart = path_overlaps(graph, run)
    groups: list[list[int]] = []
    group_levels: list[int] = []
    for n, bucket in enumerate(buckets, 1):
        step = size or len(bucket)
        if apart and any(v in apart for v in bucket):
            split = first_fit(bucket, step, apart)
        else:
            split = [bucket[start : start + step] for start in range(0, len(bucket), step)]
        groups += split
        group_levels += [n] * len(split)

    estimated = len(run) - list(map(graph.estimates.__getitem__, run)).count(None)
    if weights is not None and len(run) < len(selected):
        # blocked tickets shifted the mean estimate (or held all of them): weigh again
        weights = _weights(graph, run)
        walk.heavy = _heavy(graph.deps, status, weights, buckets) if weights else None
    path = _critical_path(graph, status, walk, buckets, run)
    path_seconds = sum(weights[v] for v in path) if weights is not None else None
    stats = compute_stats(groups, [len(b) for b in buckets], weights, estimated, size)

    levels = [list(map(ids.__getitem__, b)) for b in buckets]
    blocked = list(compress(range(len(ids)), map(eq, status, repeat(_BLOCKED))))
    slots = size or stats.workers
    simulate = estimate and not steps_by_level(weights, apart, buckets, slots)
    run_deps = _int_deps(graph, status, run) if simulate or apart else []
    schedules = (
        estimate_schedules(graph, run, run_deps, groups, weights, path, slots, apart, buckets)
        if estimate
        else None
    )
    return Plan(
        batches=[list(map(ids.__getitem__, g)) for g in groups]
        if size or apart
        else list(map(list, levels)),
        batch_levels=group_levels,
        levels=levels,
        critical_path=[ids[v] for v in path],
        critical_path_seconds=path_seconds,
        blocked=[ids[v] for v in blocked],
        completed=list(compress(ids, map(eq, states, repeat(COMPLETED)))),
        tickets=len(ids),
        to_run=len(run),
        parallel=size,
        stats=stats,
        deps=_run_deps(graph, status, run, walk.mixed),
        deferred=list(compress(ids, map(eq, status, repeat(_SKIPPED)))),
        schedules=schedules,
        overlaps={ids[v]: sorted(ids[o] for o in os) for v, os in sorted(apart.items())},
        serialized=serialized_pairs(graph, run_deps, apart),
        blocked_reasons=_blocked_reasons(graph, status, blocked, held),
    )


def _blocked_reasons(
    graph: TicketGraph, status: list[int], blocked: list[int], held: dict[int, int]
) -> dict[str, str]:
    """Why each blocked ticket is: its DEFERRED ancestor, else a dependency that holds it.

    The dependency named is a DEFERRED one when there is one, else a blocked
    one, the smallest id first: the same whichever field names the edge.
    """
    ids = graph.ids
    out: dict[str, str] = {}
    for v in blocked:
        if v in held:
            out[ids[v]] = parent_reason(graph, v, held[v])
            continue
        for code, what in ((_SKIPPED, "DEFERRED and not retried"), (_BLOCKED, "BLOCKED")):
            names = [ids[d] for d in graph.deps[v] if status[d] == code]
            if names:
                out[ids[v]] = f"dependency {min(names)} is {what}"
                break
    return out


def _weights(graph: TicketGraph, tickets: list[int]) -> list[float] | None:
    """Seconds per slot when any of ``tickets`` has an estimate (the others get the mean)."""
    est = graph.estimates
    known = [s for v in tickets if (s := est[v]) is not None]
    if not known:
        return None
    mean = sum(known) / len(known)
    return [mean if s is None else s for s in est]


class _Walk:
    """Depth first over the whole graph, finishing each ticket after its dependencies.

    When a ticket finishes, its dependencies are final, so it pulls from them:
    its level is one more than the deepest level among its dependencies to
    run (likewise the heaviest chain ending in it, with ``weights``); a
    ticket to run with a blocked or skipped dependency is blocked. Meeting a
    ticket that is still open means a cycle (``acyclic`` is then False and
    nothing else is meaningful). ``mixed`` lists the tickets to run with a
    COMPLETED dependency.
    """

    def __init__(self, deps: list[list[int]], status: list[int], weights: list[float] | None):
        n = len(deps)
        mark = [0] * n  # 0 unseen, 1 open (on the path), 2 finished
        level = [0] * n  # while open: deepest finished dependency to run so far
        heavy = [0.0] * n
        w = weights if weights is not None else [0.0] * n
        mixed: list[int] = []
        acyclic = True
        for root in range(n):
            if not mark[root]:
                acyclic &= _walk_from(root, deps, status, mark, level, heavy, w, mixed)
        self.level = level
        self.heavy: list[float] | None = heavy if weights is not None else None
        self.mixed = mixed
        self.acyclic = acyclic


def _walk_from(
    root: int,
    deps: list[list[int]],
    status: list[int],
    mark: list[int],
    level: list[int],
    heavy: list[float],
    w: list[float],
    mixed: list[int],
) -> bool:
    """One depth-first tree of :class:`_Walk` from ``root``; False when it met a cycle.

    The per-edge pull stays inline (it runs once per dependency, the hot
    loop); finishing a ticket, once per ticket, is :func:`_finish`.
    """
    acyclic = True
    mark[root] = 1
    stack = [(root, iter(deps[root]))]
    while stack:
        v, todo = stack[-1]
        lv, hv = level[v], heavy[v]
        for d in todo:
            m = mark[d]
            if m == 2:
                s = status[d]
                if s == _RUN:
                    if level[d] > lv:
                        lv = level[d]
                    if heavy[d] > hv:
                        hv = heavy[d]
                elif s == _DONE:
                    mixed.append(v)
                elif status[v] == _RUN:
                    status[v] = _BLOCKED
            elif m == 0:  # open it; come back to ``v`` when it is finished
                level[v], heavy[v] = lv, hv
                mark[d] = 1
                stack.append((d, iter(deps[d])))
                break
            else:
                acyclic = False
        else:
            stack.pop()
            mark[v] = 2
            level[v], heavy[v] = lv + 1, hv + w[v]
            if stack:  # the parent consumed ``v`` before opening it: pull it now
                _finish(stack[-1][0], v, status, level, heavy, mixed)
    return acyclic


def _finish(
    p: int, v: int, status: list[int], level: list[int], heavy: list[float], mixed: list[int]
) -> None:
    """Parent ``p`` pulls from its just-finished dependency ``v`` (as the inline pull does)."""
    s = status[v]
    if s == _RUN:
        if level[v] > level[p]:
            level[p] = level[v]
        if heavy[v] > heavy[p]:
            heavy[p] = heavy[v]
    elif s == _DONE:
        mixed.append(p)
    elif status[p] == _RUN:
        status[p] = _BLOCKED


def _heavy(
    deps: list[list[int]], status: list[int], weights: list[float], buckets: list[list[int]]
) -> list[float]:
    """The heaviest chain ending in each ticket to run, level by level."""
    heavy = [0.0] * len(status)
    for bucket in buckets:
        for v in bucket:
            m = 0.0
            for d in deps[v]:
                if status[d] == _RUN and heavy[d] > m:
                    m = heavy[d]
            heavy[v] = m + weights[v]
    return heavy


def _critical_path(
    graph: TicketGraph, status: list[int], walk: _Walk, buckets: list[list[int]], run: list[int]
) -> list[int]:
    """The heaviest chain of tickets to run; ties go to priority, then id.

    By count a chain's weight is its last ticket's level, so the path ends on
    the last level; with estimates it ends on the heaviest ticket.
    """
    if not buckets:
        return []
    deps, ids, prios = graph.deps, graph.ids, graph.priorities

    def key(v: int) -> tuple[int, str]:
        return prios[v], ids[v]

    dist: list[float] | list[int]
    if walk.heavy is None:
        dist = walk.level
        end = buckets[-1][0]
    else:
        dist = walk.heavy
        best = max(map(dist.__getitem__, run))
        end = min(compress(run, map(eq, map(dist.__getitem__, run), repeat(best))), key=key)
    path = [end]
    while True:
        run_deps = [d for d in deps[path[-1]] if status[d] == _RUN]
        if not run_deps:
            break
        top = max(dist[d] for d in run_deps)
        path.append(min((d for d in run_deps if dist[d] == top), key=key))
    path.reverse()
    return path


def _int_deps(graph: TicketGraph, status: list[int], run: list[int]) -> list[list[int]]:
    """For each ticket to run, its dependencies to run (each once); [] for the others."""
    deps = graph.deps
    out: list[list[int]] = [[] for _ in graph.ids]
    for v in run:
        out[v] = list(dict.fromkeys(d for d in deps[v] if status[d] == _RUN))
    return out


def eager_order(doc: IndexDocument, plan: Plan) -> list[str]:
    """The plan's tickets in the order ``--schedule eager`` prefers them when ready.

    Priority first, then the heaviest chain of work that waits on the ticket
    (by estimate, a ticket without one counting as the mean; by count when
    none has one), then id.
    """
    graph = doc.graph
    where = graph.index
    run = [where[t] for batch in plan.batches for t in batch]
    deps: list[list[int]] = [[] for _ in graph.ids]
    for t, ds in plan.deps.items():
        deps[where[t]] = [where[d] for d in ds]
    weights = _weights(graph, run) or [1.0] * len(graph.ids)
    order = urgency_order(run, deps, weights, graph.priorities, graph.ids)
    return [graph.ids[v] for v in order]


def _run_deps(
    graph: TicketGraph, status: list[int], run: list[int], mixed: list[int]
) -> dict[str, list[str]]:
    """Each ticket to run with its dependencies that are to run too, each named once."""
    ids, dep_names, deps = graph.ids, graph.dep_names, graph.deps
    unique = dict.fromkeys  # an index may list a dependency twice
    names = map(ids.__getitem__, run)
    out = dict(zip(names, map(list, map(unique, map(dep_names.__getitem__, run))), strict=True))
    for v in set(mixed):
        if status[v] == _RUN:
            kept = [ids[d] for d in deps[v] if status[d] == _RUN]
            out[ids[v]] = list(unique(kept)) if len(kept) > 1 else kept
    return out
