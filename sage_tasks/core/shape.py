"""The per-ticket pass over an index: field shapes, ids, links, estimates, paths.

It runs on every load, on indexes of 100k tickets, so it has two paths.
The fast path pulls each field into a column in one loop and checks whole
columns at once in C (``set(map(type, ...))``, one regex over all ids, one
``dict`` for uniqueness); it gives up at the first sign of trouble. The slow
path then walks the tickets one by one and words every problem.

Problems come in two kinds:

* *shape* problems (a ticket that is not an object, a missing or non-string
  id, a field of the wrong type, a bad ``state`` or ``priority``) make a
  typed :class:`~sage_tasks.core.index.Ticket` impossible, so loading fails;
* *semantic* problems (invalid or duplicate ids, unknown and self
  dependencies, unreadable estimates) are raised when the index is planned,
  with the cycles and the tickets without a command.

Besides ``dependencies``, Sage schema 2.2.0's ``blockedBy`` and ``blocks``
are execution edges, checked the same way (each problem names its field),
and its informational links only give *warnings* (see
:mod:`sage_tasks.core.links`). A ``null`` list is an empty one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import contains, is_not
from typing import Any

from sage_tasks.core.columns import Columns
from sage_tasks.core.estimate import parse_estimate
from sage_tasks.core.graph import PRIORITY_CODES, STATE_CODES, TicketGraph
from sage_tasks.core.links import (
    BLOCKED_BY,
    BLOCKS,
    DEPENDENCIES,
    link_problem,
    merge_links,
    read_informational,
)
from sage_tasks.core.links import show_value as _show
from sage_tasks.core.paths import glob_problem
from sage_tasks.errors import Problem

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: ``ID_PATTERN`` whose end does not accept a trailing newline (as ``$`` would)
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_IDS_RE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,63}\n)*")
_EMPTY: list[str] = []
_NONE = type(None)
_STRINGS = {str}
_LISTS = {list, _NONE}
_OPT_STR = {str, _NONE}
_NUMBERS = {int, float, _NONE}
_INTS = {int}
_ESTIMATES = {str, int, float, _NONE}
_STATES = "UNPROCESSED, IN_PROGRESS, COMPLETED or DEFERRED"


@dataclass(slots=True, eq=False)
class CheckedIndex:
    """The result of :func:`check_tickets`: the graph and what is wrong with it."""

    graph: TicketGraph
    shape: list[Problem] = field(default_factory=list)
    semantic: list[Problem] = field(default_factory=list)
    #: unknown ids and odd shapes in informational links: shown, never fatal
    warnings: list[Problem] = field(default_factory=list)


def check_tickets(items: list[Any]) -> CheckedIndex:
    """Check every ticket object of an index's ``tickets`` list and build its graph."""
    try:
        fast = _fast(items)
    except (TypeError, KeyError, ValueError):  # unhashable values, unknown ids, ...
        fast = None
    return fast if fast is not None else _slow(items)


def _fast(items: list[Any]) -> CheckedIndex | None:
    """The whole check in column operations, or None at the first anomaly."""
    if items and set(map(type, items)) != {dict}:
        return None
    column = Columns(items)
    ids = column("id")
    if not _ids_ok(ids):
        return None
    n = len(ids)
    index = dict(zip(ids, range(n), strict=True))
    states = list(map(STATE_CODES.__getitem__, column("state", "UNPROCESSED")))
    prios = list(map(PRIORITY_CODES.__getitem__, column("priority", "P2")))
    runs = column("run")
    ests = column("estimate")
    if len(index) != n or not _scalars_ok(column, runs, ests):
        return None
    seconds = {e: _seconds(e) for e in set(ests)}
    dls = column("dependencies")
    kinds = set(map(type, dls))
    if -1.0 in seconds.values() or not kinds <= _LISTS:
        return None
    if _NONE in kinds:  # a missing or null list is an empty one
        dls = [_EMPTY if d is None else d for d in dls]
    blocked_by = _fast_links(ids, column("blockedBy"))
    blocks = _fast_links(ids, column("blocks"))
    if blocked_by is None or blocks is None:
        return None
    paths = column.present_values("paths")
    if paths and any(_paths_problem(g) for g in paths.values()):
        return None
    graph = TicketGraph(
        ids=ids,
        index=index,
        states=states,
        priorities=prios,
        runs=runs,
        estimates=list(map(seconds.__getitem__, ests)),
        dep_names=dls,
        paths=paths,
    )
    merge_links(graph, blocked_by, blocks)
    # raises KeyError for an unknown dependency (or one that is not a string); a
    # dependency listed twice stays twice (harmless), a self dependency shows up as
    # a cycle of one ticket, reported as such
    graph.link()
    info = (column(key) for key in ("relatedTo", "discoveredFrom", "parent"))
    return CheckedIndex(graph, warnings=read_informational(graph, *info))


def _ids_ok(ids: list[Any]) -> bool:
    """All ids strings of the id pattern (uniqueness is checked by the caller)."""
    if not ids:
        return True
    if set(map(type, ids)) != _STRINGS:
        return False
    joined = "\n".join(ids)
    # one regex over all ids; the count makes sure no id hides a newline
    return joined.count("\n") == len(ids) - 1 and _IDS_RE.fullmatch(joined + "\n") is not None


def _scalars_ok(column: Columns, runs: list[Any], ests: list[Any]) -> bool:
    """``run``, ``title``, ``timeout``, ``retries`` and the estimates' types are all sound."""
    touts = column("timeout")
    tries = column("retries", 0)
    return (
        set(map(type, runs)) <= _OPT_STR
        and set(map(type, column("title", ""))) <= _STRINGS
        and set(map(type, touts)) <= _NUMBERS
        and set(map(type, tries)) <= _INTS
        and min(tries, default=0) >= 0
        and min((t for t in touts if t is not None), default=1) > 0
        and set(map(type, ests)) <= _ESTIMATES
    )


def _fast_links(ids: list[str], column: list[Any]) -> dict[int, list[str]] | None:
    """Slot -> ids of a ``blockedBy``/``blocks`` column, or None unless all is well."""
    n = len(column)
    if column.count(None) == n:
        return {}
    slots = list(compress(range(n), map(is_not, column, repeat(None))))
    lists = list(map(column.__getitem__, slots))
    if set(map(type, lists)) != {list}:
        return None
    if any(map(contains, lists, map(ids.__getitem__, slots))):
        return None  # a ticket naming itself: the slow path words it
    # an unknown id, or one that is not a string, raises KeyError (TypeError) when the
    # graph is linked: the slow path words it too
    return dict(zip(slots, lists, strict=True))


def _seconds(value: object) -> float | None:
    if value is None:
        return None
    try:
        return parse_estimate(value)
    except ValueError:
        return -1.0


def _paths_problem(globs: object) -> str | None:
    """What is wrong with a ticket's ``paths`` (None: nothing)."""
    if type(globs) is not list:
        return f"'paths' must be a list of relative globs, got {_show(globs)}"
    for n, glob in enumerate(globs):
        problem = glob_problem(glob)
        if problem:
            return f"'paths'[{n}] {_show(glob)} {problem}"
    return None


def _slow(items: list[Any]) -> CheckedIndex:
    """One ticket at a time, wording every problem."""
    graph = TicketGraph()
    shape: list[Problem] = []
    semantic: list[Problem] = []
    raw_links: list[tuple[list[str], list[str], list[str]]] = []
    info: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    for pos, item in enumerate(items):
        if type(item) is not dict:
            shape.append(Problem(f"tickets[{pos}]: is not an object but {type(item).__name__}"))
            _add_slot(graph, f"tickets[{pos}]")
            raw_links.append((_EMPTY, _EMPTY, _EMPTY))
            for column in info:
                column.append(None)
            continue
        tid = item.get("id")
        ref: tuple[str, ...] = ()
        if type(tid) is str:
            name = who = tid
            if ID_RE.match(tid) is None:
                semantic.append(
                    Problem(f"tickets[{pos}]: invalid id {_show(tid)} (must match {ID_PATTERN})")
                )
                who = f"tickets[{pos}]"
            elif tid in graph.index:
                first = graph.index[tid]
                semantic.append(
                    Problem(
                        f"ticket {tid}: duplicate id (tickets[{first}] and tickets[{pos}])", (tid,)
                    )
                )
                ref = (tid,)
            else:
                graph.index[tid] = pos
                ref = (tid,)
            who = f"ticket {who}" if ref else who
        else:
            name = who = f"tickets[{pos}]"
            what = "no 'id'" if tid is None else f"'id' must be a string, got {_show(tid)}"
            shape.append(Problem(f"{name}: {what}"))
        _add_slot(graph, name)
        raw_links.append(_check_fields(item, graph, who, ref, shape, semantic))
        for column, key in zip(info, ("relatedTo", "discoveredFrom", "parent"), strict=True):
            column.append(item.get(key))
    _resolve(graph, raw_links, semantic)
    warnings = read_informational(graph, *info)
    return CheckedIndex(graph, shape, semantic, warnings)


def _add_slot(graph: TicketGraph, name: str) -> None:
    graph.ids.append(name)
    graph.states.append(0)
    graph.priorities.append(2)
    graph.runs.append(None)
    graph.estimates.append(None)


def _check_fields(
    item: dict[str, Any],
    graph: TicketGraph,
    who: str,
    ref: tuple[str, ...],
    shape: list[Problem],
    semantic: list[Problem],
) -> tuple[list[str], list[str], list[str]]:
    """Check one ticket's fields into its (last) slot.

    Returns the names its ``dependencies``, ``blockedBy`` and ``blocks`` hold
    (empty for a field of the wrong shape, which is a problem).
    """

    def bad(message: str) -> None:
        shape.append(Problem(f"{who}: {message}", ref))

    _check_scalars(item, graph, bad)
    est = item.get("estimate")
    if est is not None:
        try:
            graph.estimates[-1] = parse_estimate(est)
        except ValueError:
            semantic.append(Problem(f"{who}: cannot read estimate {_show(est)}", ref))
    globs = item.get("paths")
    if globs is not None:
        problem = _paths_problem(globs)
        if problem:
            bad(problem)
        else:
            graph.paths[len(graph.ids) - 1] = globs
    lists: list[list[str]] = []
    for key in (DEPENDENCIES, BLOCKED_BY, BLOCKS):
        value = item.get(key)
        problem = link_problem(key, value)
        if problem:
            bad(problem)
        lists.append(value if value is not None and not problem else _EMPTY)
    return lists[0], lists[1], lists[2]


def _check_scalars(item: dict[str, Any], graph: TicketGraph, bad: Callable[[str], None]) -> None:
    """``state``, ``priority``, ``run``, ``title``, ``timeout`` and ``retries`` of one ticket."""
    state = item.get("state", "UNPROCESSED")
    code = STATE_CODES.get(state) if type(state) is str else None
    if code is None:
        bad(f"bad state {_show(state)} (expected {_STATES})")
    else:
        graph.states[-1] = code
    prio = item.get("priority", "P2")
    code = PRIORITY_CODES.get(prio) if type(prio) is str else None
    if code is None:
        bad(f"bad priority {_show(prio)} (expected P0, P1, P2 or P3)")
    else:
        graph.priorities[-1] = code
    run = item.get("run")
    if run is None or type(run) is str:
        graph.runs[-1] = run
    else:
        bad(f"'run' must be a shell command string, got {_show(run)}")
    if type(item.get("title", "")) is not str:
        bad(f"'title' must be a string, got {_show(item['title'])}")
    timeout = item.get("timeout")
    if timeout is not None and (type(timeout) not in (int, float) or timeout <= 0):
        bad(f"'timeout' must be a positive number of seconds, got {_show(timeout)}")
    retries = item.get("retries", 0)
    if type(retries) is not int or retries < 0:
        bad(f"'retries' must be a whole number >= 0, got {_show(retries)}")


def _resolve(
    graph: TicketGraph,
    raw_links: list[tuple[list[str], list[str], list[str]]],
    semantic: list[Problem],
) -> None:
    """Keep the known links; unknown and self ones become problems naming their field."""
    blocked_by: dict[int, list[str]] = {}
    blocks: dict[int, list[str]] = {}
    for v, (deps, bbs, bls) in enumerate(raw_links):
        me = graph.ids[v]
        kept = [d for d in deps if _known(graph, me, DEPENDENCIES, d, semantic)]
        graph.dep_names.append(kept if len(kept) < len(deps) else deps)
        for names, out, key in ((bbs, blocked_by, BLOCKED_BY), (bls, blocks, BLOCKS)):
            if names is not _EMPTY:  # a list in the index, maybe an empty one
                out[v] = [d for d in names if _known(graph, me, key, d, semantic)]
    merge_links(graph, blocked_by, blocks)
    graph.link()


def _known(graph: TicketGraph, me: str, key: str, name: str, semantic: list[Problem]) -> bool:
    """True when ``name`` in ticket ``me``'s ``key`` is another known ticket; else a problem."""
    if name == me:
        what = "depends on itself" if key == DEPENDENCIES else f"'{key}' names itself"
    elif name not in graph.index:
        what = (
            f"unknown dependency {_show(name)}"
            if key == DEPENDENCIES
            else f"'{key}' names unknown ticket {_show(name)}"
        )
    else:
        return True
    semantic.append(Problem(f"ticket {me}: {what}", (me,)))
    return False
