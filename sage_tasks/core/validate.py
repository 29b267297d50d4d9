"""Validation of a ticket index: every problem at once, each naming its tickets.

One pass over the raw ticket objects (plain dicts, no pydantic: this runs on
100k tickets) checks each field's shape and builds the columnar
:class:`TicketGraph`. Problems come in two kinds:

* *shape* problems (a ticket that is not an object, a missing or non-string
  id, a field of the wrong type, a bad ``state`` or ``priority``) make a
  typed :class:`~sage_tasks.core.index.Ticket` impossible, so loading the
  index fails on them;
* *graph* problems (invalid or duplicate ids, unknown and self
  dependencies, unreadable estimates, cycles, tickets to run without a
  command) are found when the index is planned.

When loading fails, the graph problems found so far are reported with the
shape problems, so one run of the validator shows everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sage_tasks.core.estimate import parse_estimate
from sage_tasks.core.graph import (
    PRIORITY_CODES,
    STATE_CODES,
    TicketGraph,
    cycles_covering,
    strongly_connected_components,
    topological_order,
)
from sage_tasks.errors import Problem

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: a strongly connected component up to this size has every ticket named on a cycle
FULL_CYCLE_REPORT = 50
#: cycles reported for a larger component, before a summary line
LARGE_COMPONENT_CYCLES = 10
_NAMED_IN_SUMMARY = 20

_EMPTY: list[int] = []
_ID_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_REST = _ID_OK | frozenset("._-")


def id_is_valid(value: str) -> bool:
    """True when ``value`` matches :data:`ID_PATTERN` (without the regex, for speed)."""
    return (
        0 < len(value) <= 64
        and value[0] in _ID_OK
        and ((value.isalnum() and value.isascii()) or _ID_REST.issuperset(value))
    )


@dataclass(slots=True, eq=False)
class CheckedIndex:
    """The result of :func:`check_tickets`: the graph and what is wrong with it."""

    graph: TicketGraph
    shape: list[Problem] = field(default_factory=list)
    semantic: list[Problem] = field(default_factory=list)


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 60 else text[:57] + "..."


def check_tickets(items: list[Any]) -> CheckedIndex:
    """Check every ticket object of an index's ``tickets`` list and build its graph."""
    graph = TicketGraph()
    shape: list[Problem] = []
    semantic: list[Problem] = []
    ids = graph.ids
    states = graph.states
    prios = graph.priorities
    has_run = graph.has_run
    estimates = graph.estimates
    index = graph.index
    raw_deps: list[list[str] | None] = []
    estimate_cache: dict[str, float | None] = {}
    state_codes = STATE_CODES
    prio_codes = PRIORITY_CODES

    for pos, item in enumerate(items):
        if type(item) is not dict:
            shape.append(Problem(f"tickets[{pos}]: is not an object but {type(item).__name__}"))
            ids.append(f"tickets[{pos}]")
            states.append(0)
            prios.append(2)
            has_run.append(False)
            estimates.append(None)
            raw_deps.append(None)
            continue
        tid = item.get("id")
        if type(tid) is str:
            name = tid
            ref: tuple[str, ...] = (tid,)
            if not id_is_valid(tid):
                semantic.append(
                    Problem(f"tickets[{pos}]: invalid id {_show(tid)} (must match {ID_PATTERN})")
                )
                ref = ()
            elif tid in index:
                first = index[tid]
                semantic.append(
                    Problem(
                        f"ticket {tid}: duplicate id (tickets[{first}] and tickets[{pos}])", ref
                    )
                )
            else:
                index[tid] = pos
            who = f"ticket {tid}"
        else:
            name = f"tickets[{pos}]"
            ref = ()
            who = name
            if tid is None:
                shape.append(Problem(f"{name}: no 'id'"))
            else:
                shape.append(Problem(f"{name}: 'id' must be a string, got {_show(tid)}"))
        ids.append(name)

        state = item.get("state", "UNPROCESSED")
        code = state_codes.get(state) if type(state) is str else None
        if code is None:
            expected = "UNPROCESSED, IN_PROGRESS, COMPLETED or DEFERRED"
            shape.append(Problem(f"{who}: bad state {_show(state)} (expected {expected})", ref))
            code = 0
        states.append(code)

        prio = item.get("priority", "P2")
        code = prio_codes.get(prio) if type(prio) is str else None
        if code is None:
            shape.append(Problem(f"{who}: bad priority {_show(prio)} (expected P0 to P3)", ref))
            code = 2
        prios.append(code)

        dl = item.get("dependencies", _EMPTY)
        if type(dl) is list and all(type(d) is str for d in dl):
            raw_deps.append(dl)
        else:
            shape.append(
                Problem(f"{who}: 'dependencies' must be a list of ticket ids, got {_show(dl)}", ref)
            )
            raw_deps.append(None)

        run = item.get("run")
        if run is None or type(run) is str:
            has_run.append(bool(run and not run.isspace()))
        else:
            shape.append(Problem(f"{who}: 'run' must be a shell command string", ref))
            has_run.append(False)

        if "title" in item or "timeout" in item or "retries" in item:
            _check_optional(item, who, ref, shape)

        est = item.get("estimate")
        if est is None:
            estimates.append(None)
        else:
            key = est if type(est) is str else None
            if key is not None and key in estimate_cache:
                seconds = estimate_cache[key]
            else:
                try:
                    seconds = parse_estimate(est)
                except ValueError:
                    seconds = None
                if key is not None:
                    estimate_cache[key] = seconds
            if seconds is None:
                semantic.append(Problem(f"{who}: cannot read estimate {_show(est)}", ref))
            estimates.append(seconds)

    graph.deps = _resolve(raw_deps, ids, index, semantic)
    return CheckedIndex(graph, shape, semantic)


def _check_optional(
    item: dict[str, Any], who: str, ref: tuple[str, ...], out: list[Problem]
) -> None:
    title = item.get("title", "")
    if type(title) is not str:
        out.append(Problem(f"{who}: 'title' must be a string, got {_show(title)}", ref))
    timeout = item.get("timeout")
    if timeout is not None and (type(timeout) not in (int, float) or not timeout > 0):
        out.append(Problem(f"{who}: 'timeout' must be a positive number of seconds", ref))
    retries = item.get("retries", 0)
    if type(retries) is not int or retries < 0:
        out.append(Problem(f"{who}: 'retries' must be a whole number >= 0", ref))


def _resolve(
    raw_deps: list[list[str] | None],
    ids: list[str],
    index: dict[str, int],
    semantic: list[Problem],
) -> list[list[int]]:
    """Dependency ids to slots; unknown and self dependencies become problems."""
    get = index.get
    out: list[list[int]] = []
    append = out.append
    for v, names in enumerate(raw_deps):
        if not names:
            append(_EMPTY)
            continue
        resolved = [get(d, -1) for d in names]
        if -1 in resolved or v in resolved or ids[v] in names:
            me = ids[v]
            kept = []
            for d, j in zip(names, resolved, strict=True):
                if d == me:
                    semantic.append(Problem(f"ticket {me}: depends on itself", (me,)))
                elif j < 0:
                    semantic.append(Problem(f"ticket {me}: unknown dependency {_show(d)}", (me,)))
                elif j != v:
                    kept.append(j)
            resolved = kept
        if len(resolved) > 1 and len(set(resolved)) < len(resolved):
            resolved = list(dict.fromkeys(resolved))
        append(resolved)
    return out


def cycle_problems(graph: TicketGraph, left: list[int]) -> list[Problem]:
    """Every cycle among ``left`` (the nodes a topological sort could not order).

    Each strongly connected component is reported as cycle paths
    (``cycle: A -> B -> C -> A``, each ticket depending on the next) that
    together name all its tickets; a component larger than
    :data:`FULL_CYCLE_REPORT` gets a few cycles and one summary line.
    """
    names = graph.ids
    problems: list[Problem] = []
    components = strongly_connected_components(graph.deps, left)
    for comp in sorted(components, key=lambda c: c[0]):
        limit = len(comp) if len(comp) <= FULL_CYCLE_REPORT else LARGE_COMPONENT_CYCLES
        cycles, rest = cycles_covering(graph.deps, comp, names, limit)
        for cycle in cycles:
            path = [names[v] for v in cycle]
            problems.append(Problem("cycle: " + " -> ".join([*path, path[0]]), tuple(path)))
        if rest:
            shown = ", ".join(names[v] for v in rest[:_NAMED_IN_SUMMARY])
            more = len(rest) - _NAMED_IN_SUMMARY
            tail = f" and {more} more" if more > 0 else ""
            problems.append(
                Problem(
                    f"cycle: {len(rest)} more tickets on cycles with {names[comp[0]]}: "
                    f"{shown}{tail}",
                    tuple(names[v] for v in rest),
                )
            )
    return problems


def order_or_cycles(graph: TicketGraph) -> tuple[list[int], list[Problem]]:
    """A topological order of the whole graph, and the cycle problems (if any)."""
    order, left = topological_order(graph.deps)
    if not left:
        return order, []
    return order, cycle_problems(graph, left)


def command_problems(graph: TicketGraph, to_run: list[int], has_executor: bool) -> list[Problem]:
    """Tickets to run with neither a ``run`` command nor an executor."""
    if has_executor:
        return []
    ids = graph.ids
    return [
        Problem(
            f"ticket {ids[v]}: no 'run' command and no executor (--executor or SAGE_EXECUTOR)",
            (ids[v],),
        )
        for v in to_run
        if not graph.has_run[v]
    ]
