"""The plan: which tickets run, in which batches, along which critical path.

:func:`build_plan` follows the design's "What a run does", steps 1 to 3:

1. *Selection*: UNPROCESSED and IN_PROGRESS tickets are to run, COMPLETED
   ones satisfy their dependents, DEFERRED ones are not re-run unless
   ``retry_deferred``. A ticket that depends, directly or through other
   tickets to run, on a DEFERRED ticket that is not re-run is *blocked*: in
   no batch. Blocking never passes through a COMPLETED ticket.
2. *Validation*: every problem of the index at once (see
   :mod:`sage_tasks.core.validate`), raised as :class:`IndexValidationError`.
3. *Batches*: a ticket's level is one more than the deepest level among its
   dependencies to run; each level is sorted by priority (P0 first) then id
   and, with ``parallel`` N, split into consecutive groups of at most N.

The critical path is the heaviest chain of tickets to run, weighted by
their estimates (a ticket without one counts as the mean of the others), or
by count when no ticket to run has an estimate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from sage_tasks.core.graph import COMPLETED, STATE_CODES, TicketGraph
from sage_tasks.core.index import IndexDocument
from sage_tasks.core.stats import PlanStats, auto_workers, compute_stats
from sage_tasks.core.validate import command_problems
from sage_tasks.errors import ConfigError, IndexValidationError, Problem

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
) -> Plan:
    """Validate ``doc`` and plan its run; :class:`IndexValidationError` lists every problem."""
    if parallel is not None:
        resolve_parallel(parallel, cores, 1)  # reject a bad value before the work
    order, found = doc.problems()
    graph = doc.graph
    problems = list(found)
    states = _current_states(doc, graph, problems)
    skip = _SKIPPED if not retry_deferred else _RUN
    status = [(_RUN, _RUN, _DONE, skip)[s] for s in states]
    candidates = [v for v, s in enumerate(status) if s == _RUN]
    problems += command_problems(graph, candidates, has_executor)
    if problems:
        raise IndexValidationError(problems, path=doc.source)

    level = _select_and_level(graph.deps, order, status)
    ids, prios = graph.ids, graph.priorities
    run = [v for v in candidates if status[v] == _RUN]
    depth = max((level[v] for v in run), default=0)
    buckets: list[list[int]] = [[] for _ in range(depth)]
    for v in run:
        buckets[level[v] - 1].append(v)
    for bucket in buckets:
        bucket.sort(key=ids.__getitem__)
        bucket.sort(key=prios.__getitem__)  # stable: priority first, then id

    size = resolve_parallel(parallel, cores, len(run))
    groups: list[list[int]] = []
    group_levels: list[int] = []
    for n, bucket in enumerate(buckets, 1):
        step = size or len(bucket)
        for start in range(0, len(bucket), step):
            groups.append(bucket[start : start + step])
            group_levels.append(n)

    weights = _weights(graph, run)
    path = _critical_path(graph, status, level, weights, buckets)
    path_seconds = sum(weights[v] for v in path) if weights is not None else None
    estimated = sum(1 for v in run if graph.estimates[v] is not None)
    stats = compute_stats(groups, [len(b) for b in buckets], weights, estimated, size)

    def names(nodes: list[int]) -> list[str]:
        return [ids[v] for v in nodes]

    deps = graph.deps
    return Plan(
        batches=[names(g) for g in groups],
        batch_levels=group_levels,
        levels=[names(b) for b in buckets],
        critical_path=names(path),
        critical_path_seconds=path_seconds,
        blocked=[ids[v] for v, s in enumerate(status) if s == _BLOCKED],
        completed=[ids[v] for v, s in enumerate(states) if s == COMPLETED],
        tickets=len(ids),
        to_run=len(run),
        parallel=size,
        stats=stats,
        deps={ids[v]: [ids[d] for d in deps[v] if status[d] == _RUN] for v in run},
        deferred=[ids[v] for v, s in enumerate(status) if s == _SKIPPED],
    )


def _current_states(doc: IndexDocument, graph: TicketGraph, problems: list[Problem]) -> list[int]:
    """States as ``raw`` has them now, in case a caller edited it without ``set_state``."""
    codes = STATE_CODES
    states = graph.states
    for v, item in enumerate(doc.raw["tickets"]):
        if type(item) is not dict:
            continue
        name = item.get("state", "UNPROCESSED")
        code = codes.get(name) if type(name) is str else None
        if code is None:
            problems.append(Problem(f"ticket {graph.ids[v]}: bad state {name!r}", (graph.ids[v],)))
        elif code != states[v]:
            states[v] = code
    return states


def _select_and_level(deps: list[list[int]], order: list[int], status: list[int]) -> list[int]:
    """Mark blocked tickets in ``status`` and return each ticket to run's level.

    One pass in topological order: a ticket to run is blocked when a
    dependency is blocked or a skipped DEFERRED ticket; otherwise its level is
    one more than the deepest level among its dependencies to run.
    """
    level = [0] * len(status)
    for v in order:
        if status[v] != _RUN:
            continue
        deepest = 0
        for d in deps[v]:
            sd = status[d]
            if sd == _RUN:
                if level[d] > deepest:
                    deepest = level[d]
            elif sd != _DONE:
                status[v] = _BLOCKED
                break
        else:
            level[v] = deepest + 1
    return level


def _weights(graph: TicketGraph, run: list[int]) -> list[float] | None:
    """Seconds per ticket (by number) when any ticket to run has an estimate, else None."""
    est = graph.estimates
    known = [s for v in run if (s := est[v]) is not None]
    if not known:
        return None
    mean = sum(known) / len(known)
    return [mean if s is None else s for s in est]


def _critical_path(
    graph: TicketGraph,
    status: list[int],
    level: list[int],
    weights: list[float] | None,
    buckets: list[list[int]],
) -> list[int]:
    """The heaviest chain of tickets to run; ties go to priority, then id.

    By count the chain's weight is its last ticket's level, so only the path
    itself is traced; with weights, the heaviest total to each ticket is
    computed level by level first.
    """
    if not buckets:
        return []
    deps, ids, prios = graph.deps, graph.ids, graph.priorities
    if weights is None:
        dist: list[float] | list[int] = level
        end = buckets[-1][0]
    else:
        heavy = [0.0] * len(status)
        for bucket in buckets:  # levels are a topological order of the tickets to run
            for v in bucket:
                m = 0.0
                for d in deps[v]:
                    if status[d] == _RUN and heavy[d] > m:
                        m = heavy[d]
                heavy[v] = m + weights[v]
        best = max(heavy[v] for b in buckets for v in b)
        # buckets are sorted by priority then id, but the heaviest may sit on any level
        end = min(
            (v for b in buckets for v in b if heavy[v] == best), key=lambda v: (prios[v], ids[v])
        )
        dist = heavy
    path = [end]
    while True:
        run_deps = [d for d in deps[path[-1]] if status[d] == _RUN]
        if not run_deps:
            break
        top = max(dist[d] for d in run_deps)
        path.append(min((d for d in run_deps if dist[d] == top), key=lambda d: (prios[d], ids[d])))
    path.reverse()
    return path
