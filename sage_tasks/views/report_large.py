"""The report's drawings for runs too large to draw ticket by ticket.

A browser draws a few thousand SVG shapes at once without trouble, not a
hundred thousand. Above :data:`LARGE_RUN` tickets the report therefore

- draws the graph by batch: one box per batch, coloured by how its tickets
  ended, an edge between batches where some dependency runs between them
  (wider for more), the critical path drawn through the batches holding it;
- draws each timeline lane with neighbouring bars less than a pixel apart
  merged into one span (its tooltip counts them), the critical path's bars
  always on their own;
- lists in the ticket table those that did not complete and those on the
  critical path (``sage-submit status RUN --json`` lists every ticket).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from sage_tasks.store.runstate import Phase
from sage_tasks.views.lanes import Bar, Lane
from sage_tasks.views.summary import RunSummary, TicketRow

#: tickets above which the graph, the timeline and the table are aggregated
LARGE_RUN = 5000
#: rows of the ticket table at most, in a large run
TABLE_ROWS = 2000
#: how each final state is drawn, in stacking order
_ORDER = (Phase.COMPLETED.value, Phase.DEFERRED.value, Phase.BLOCKED.value)
_CLASS = {Phase.COMPLETED.value: "ok", Phase.DEFERRED.value: "df", Phase.BLOCKED.value: "bl"}

Escape = Callable[[object], str]


def is_large(summary: RunSummary) -> bool:
    """True when the run is drawn aggregated."""
    return len(summary.rows) > LARGE_RUN


def merged_lane(lane: Lane, min_gap: float, keep: set[str]) -> list[tuple[Bar, int, str]]:
    """The lane's bars, neighbours closer than ``min_gap`` seconds merged.

    Returns (a bar spanning the merged ones, how many it stands for, the
    CSS class of the worst outcome among them); tickets in ``keep`` (the
    critical path) are never merged.
    """
    out: list[tuple[Bar, int, str]] = []
    run: list[Bar] = []

    def flush() -> None:
        if run:
            states = {b.row.state for b in run}
            worst = next((s for s in reversed(_ORDER) if s in states), "")
            cls = _CLASS.get(worst, "ot")
            out.append((Bar(run[0].row, run[0].start, run[-1].end), len(run), cls))
            run.clear()

    for bar in lane.bars:
        if bar.row.id in keep:
            flush()
            out.append((bar, 1, _CLASS.get(bar.row.state, "ot")))
            continue
        if run and bar.start - run[-1].end > min_gap:
            flush()
        run.append(bar)
    flush()
    return out


def batch_graph(
    summary: RunSummary, plan: dict[str, Any], e: Escape, legend: str, section: str
) -> str:
    """The plan's graph, one box per batch (see the module's docstring)."""
    batches: list[list[str]] = [[str(t) for t in b] for b in summary.batches]
    blocked = [str(t) for t in plan.get("blocked", [])]
    groups = [(f"batch {n}", b) for n, b in enumerate(batches, 1) if b]
    if blocked:
        groups.append(("blocked", blocked))
    where = {t: n for n, (_, ids) in enumerate(groups) for t in ids}
    state = {r.id: r.state for r in summary.rows}
    links: Counter[tuple[int, int]] = Counter()
    for tid, deps in plan.get("deps", {}).items():
        b = where.get(tid)
        for dep in deps:
            a = where.get(dep)
            if a is not None and b is not None and a != b:
                links[(a, b)] += 1
    path = [str(t) for t in plan.get("critical_path") or summary.critical_path]
    on_path = Counter(where[t] for t in path if t in where)
    crit = {(where[a], where[b]) for a, b in itertools.pairwise(path) if a in where and b in where}
    box_w, step, top, height = 90.0, 130.0, 30.0, 320.0
    w = 20 + step * len(groups)
    largest = max(len(ids) for _, ids in groups)

    def x(n: int) -> float:
        return 10 + n * step

    edges: list[str] = []
    widest = max(links.values(), default=1)
    for (a, b), count in sorted(links.items()):
        cls = "ce" if (a, b) in crit else "e"
        stroke = 1 + 5 * math.log1p(count) / math.log1p(widest)
        y1 = top + height / 2 + (b - a) * 2.0
        mid = (x(a) + box_w + x(b)) / 2
        edges.append(
            f'<path class="{cls}" style="stroke-width:{stroke:.1f}" d="M{x(a) + box_w:.1f},'
            f"{y1:.1f} C{mid:.1f},{y1 - 40:.1f} {mid:.1f},{y1 - 40:.1f} {x(b):.1f},{y1:.1f}"
            f'"><title>{count} dependencies from {e(groups[a][0])} to {e(groups[b][0])}'
            "</title></path>"
        )
    nodes: list[str] = []
    for n, (name, ids) in enumerate(groups):
        counts = Counter(state.get(t, Phase.PENDING.value) for t in ids)
        full = height * (0.25 + 0.75 * len(ids) / largest)
        y = top + (height - full) / 2
        outline = " cp" if n in on_path else ""
        nodes.append(
            f'<text class="host" x="{x(n):.1f}" y="16">{e(name)} · {len(ids)}</text>'
            f'<rect class="ot{outline}" x="{x(n):.1f}" y="{y:.1f}" width="{box_w}" '
            f'height="{full:.1f}" rx="3"><title>{e(name)}: {len(ids)} tickets</title></rect>'
        )
        for st in (*_ORDER, *sorted(set(counts) - set(_ORDER))):
            if not counts.get(st):
                continue
            part = full * counts[st] / len(ids)
            nodes.append(
                f'<rect class="{_CLASS.get(st, "ot")}" x="{x(n) + 2:.1f}" y="{y:.1f}" '
                f'width="{box_w - 4}" height="{part:.1f}"><title>{e(name)}: {counts[st]} '
                f"{e(st)}</title></rect>"
            )
            y += part
        if n in on_path:
            nodes.append(
                f'<text class="tick" x="{x(n):.1f}" y="{top + height + 16:.1f}">'
                f"critical path: {on_path[n]}</text>"
            )
    h = top + height + 30
    svg = (
        f'<svg width="{w:.0f}" height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}" role="img" '
        f'aria-label="graph">{"".join(edges)}{"".join(nodes)}</svg>'
    )
    note = (
        f"{len(summary.rows)} tickets, drawn by batch: each box is a batch, its height its "
        "size, its colours how its tickets ended; edges join batches with dependencies "
        "between them (wider for more); blue: the critical path."
    )
    return f'{section}{legend}<p class="note">{note}</p><div class="scroll">{svg}</div></section>'


def table_rows(summary: RunSummary) -> tuple[list[tuple[int, TicketRow]], int]:
    """The rows a large run's table lists: not completed or on the critical path, capped.

    Returns (position in the run, row) pairs and how many rows are left out.
    """
    on_path = set(summary.critical_path)
    chosen = [
        (n, r) for n, r in enumerate(summary.rows) if r.state != Phase.COMPLETED or r.id in on_path
    ]
    kept = chosen[:TABLE_ROWS]
    return kept, len(summary.rows) - len(kept)
