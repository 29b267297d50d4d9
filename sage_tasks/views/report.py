"""A run's report: one self-contained HTML page (``sage-submit report``).

The page holds the run's header and metrics, a timeline of where and when
each ticket's command ran, the critical path, the plan's graph and every
DEFERRED or BLOCKED reason in full. Styles and drawings are inline (CSS and
SVG): nothing is fetched and no script runs, so the file can be mailed or
archived as it is. Every string that comes from the run is escaped, since
reasons carry executor output.

Large runs stay readable: timeline rows and graph nodes get thinner, labels
give way to tooltips (SVG ``<title>``), and a level too tall for one column
of the graph wraps into several.
"""

from __future__ import annotations

import html
import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sage_tasks.core.estimate import format_duration
from sage_tasks.core.files import write_atomic
from sage_tasks.core.graph import gc_paused
from sage_tasks.errors import ConfigError, UnknownRun
from sage_tasks.store.runstate import Phase, RunStatus, RunStore
from sage_tasks.views.lanes import Bar, BatchMark, Lane, bars_of, batch_marks, lanes_of
from sage_tasks.views.report_large import TABLE_ROWS, batch_graph, is_large, merged_lane, table_rows
from sage_tasks.views.summary import RunSummary, TicketRow, load_run

#: CSS class per final state; any other state is drawn as "ot"
_STATE_CLASS = {Phase.COMPLETED.value: "ok", Phase.DEFERRED.value: "df", Phase.BLOCKED.value: "bl"}
#: graph nodes per column before a level wraps into another column
_ROWS_PER_COLUMN = 200
#: dependency edges drawn at most (critical path edges are always drawn)
_EDGE_CAP = 30_000
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#212529;
margin:24px auto;max-width:1320px;padding:0 16px}
h1{font-size:22px;margin:0 0 8px}h3{font-size:14px;margin:14px 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dee2e6;padding-bottom:4px}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#f8f9fa;border:1px solid #dee2e6;padding:8px;white-space:pre-wrap;
overflow-wrap:anywhere;max-height:480px;overflow:auto;margin:0}
dl.info{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
dl.info dt{color:#6c757d}dl.info dd{margin:0;overflow-wrap:anywhere}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #dee2e6;border-radius:6px;padding:8px 12px;min-width:130px}
.card b{display:block;font-size:20px}.card span{color:#6c757d;font-size:12px}
.chip{display:inline-block;padding:0 7px;border-radius:9px;color:#fff;font-size:12px}
.chip.ok{background:#2f9e44}.chip.df{background:#e8a317}.chip.bl{background:#d6336c}
.chip.ot{background:#868e96}.ok{fill:#2f9e44}.df{fill:#e8a317}.bl{fill:#d6336c}
.ot{fill:#868e96}.note{color:#6c757d}.err{color:#d6336c;font-weight:600}
.scroll{overflow:auto;max-height:80vh;border:1px solid #dee2e6}
svg text{font:11px system-ui,sans-serif;fill:#212529}svg text.in{fill:#fff}
svg text.host{font-weight:600}svg text.tick{fill:#6c757d}
line.grid{stroke:#f1f3f5}line.lane{stroke:#f1f3f5}
line.batch{stroke:#495057;stroke-dasharray:4 3}line.batch.end{stroke-dasharray:1 3}
rect.bar{stroke:#fff;stroke-width:.5}rect.bar.cp{stroke:#1c7ed6;stroke-width:2}
path.cpl{fill:none;stroke:#1c7ed6;stroke-width:1.5;stroke-dasharray:2 2}
path.e{fill:none;stroke:#ced4da}path.ce{fill:none;stroke:#1c7ed6;stroke-width:2.5}
rect.cp{stroke:#1c7ed6;stroke-width:2}
ol.cp{padding:0;margin:6px 0;line-height:2}ol.cp li{display:inline}
ol.cp li+li::before{content:" \\2192  ";color:#6c757d}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #dee2e6;vertical-align:top}
th{background:#f8f9fa;position:sticky;top:0}td.n{text-align:right}
td.r{overflow-wrap:anywhere;max-width:520px}
"""

_POLICY = "default-src 'none'; style-src 'unsafe-inline'"


def _e(value: object) -> str:
    """``value`` as text safe in HTML and inline SVG, as content or a quoted attribute."""
    text = _CONTROL.sub("\ufffd", _ANSI.sub("", str(value)))
    return html.escape(text, quote=True)


def _cls(state: str) -> str:
    return _STATE_CLASS.get(state, "ot")


def _chip(state: str) -> str:
    return f'<span class="chip {_cls(state)}">{_e(state)}</span>'


def _when(ts: float | None) -> str:
    if not ts:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _secs(s: float | None) -> str:
    """A duration for people (4.2s, 3m 5s, 1h 2m), or a dash when unknown."""
    return "—" if s is None else format_duration(s, tenths=True)


def _critical_ids(s: RunSummary, plan: dict[str, Any]) -> list[str]:
    """The critical path's ticket ids: the stored plan's, else the summary's."""
    return [str(t) for t in plan.get("critical_path") or s.critical_path]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: max(1, size - 1)] + "…"


def _ticks(total: float, count: int = 8) -> list[float]:
    """Round offsets from 0 to ``total``, about ``count`` of them."""
    raw = total / count
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(total / step) + 1)]


def _legend() -> str:
    states = (Phase.COMPLETED, Phase.DEFERRED, Phase.BLOCKED)
    return (
        "<p>" + " ".join(_chip(p.value) for p in states) + ' <span class="chip ot">other</span></p>'
    )


# -- sections ------------------------------------------------------------------------


def _header(s: RunSummary) -> str:
    info = s.info
    status = _e(info.status)
    if info.status == RunStatus.FAILED:
        status = f'<span class="err">{status}</span>'
    base = f"{_e(info.base)} <code>{_e(info.base_sha[:12] or '—')}</code>"
    items = [
        ("status", status),
        ("branch", f"<code>{_e(info.branch)}</code>"),
        ("base → head", f"{base} → <code>{_e(info.head[:12] or '—')}</code>"),
        ("submitted", f"{_when(info.created)} by {_e(info.submitted_by or '—')}"),
        ("started", _when(info.started)),
        ("ended", _when(info.ended)),
        ("repository", _e(info.repo)),
        ("index", f"<code>{_e(info.index_path)}</code>"),
        ("executor", _e(info.executor or "the tickets' commands")),
    ]
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    out = [f'<header><h1>Run <code>{_e(info.run_id)}</code></h1><dl class="info">{rows}</dl>']
    if info.error:
        out.append(f'<p class="err">The run failed: {_e(info.error)}</p>')
    if not s.finished:
        out.append('<p class="note">The run has not finished: this shows it as it stood.</p>')
    return "".join(out) + "</header>"


def _metrics(s: RunSummary, plan: dict[str, Any]) -> str:
    speed = f"{s.speedup:.2f}×" if s.speedup is not None else "n/a"
    eff = f"{s.efficiency:.0%}" if s.efficiency is not None else "n/a"
    others = len(s.rows) - len(s.completed) - len(s.deferred) - len(s.blocked)
    cards = [
        (_secs(s.wall_s), "wall time"),
        (_secs(s.ticket_time_s), "summed ticket time"),
        (speed, "speedup"),
        (eff, "parallel efficiency"),
        (str(s.max_parallel), "max parallel"),
        (str(len(s.completed)), "completed"),
        (str(len(s.deferred)), "deferred"),
        (str(len(s.blocked)), "blocked"),
        (str(len(s.batches)), "batches"),
    ]
    if others:
        cards.append((str(others), "not finished"))
    body = "".join(f'<div class="card"><b>{v}</b><span>{k}</span></div>' for v, k in cards)
    return f'<section id="metrics"><h2>Metrics</h2><div class="cards">{body}</div></section>'


@dataclass(frozen=True, slots=True)
class _Scale:
    """Seconds of the run to x pixels of the timeline."""

    t0: float
    total: float
    left: float = 200.0
    width: float = 960.0

    def x(self, t: float) -> float:
        return self.left + (t - self.t0) / self.total * self.width


def _timeline(s: RunSummary, plan: dict[str, Any], marks: list[BatchMark]) -> str:
    head = '<section id="timeline"><h2>Timeline</h2>'
    bars = bars_of(s.rows)
    if not bars:
        return head + '<p class="note">No ticket ran.</p></section>'
    lanes = lanes_of(bars)
    times = [t for b in bars for t in (b.start, b.end)]
    times += [t for m in marks for t in (m.start, m.end) if t is not None]
    scale = _Scale(min(times), max(max(times) - min(times), 1e-3))
    rh = max(6.0, min(24.0, 2400 / len(lanes)))
    top = 30.0
    path = _critical_ids(s, plan)
    on_path = set(path)
    large = is_large(s)
    where: dict[str, tuple[Bar, float]] = {}  # ticket -> its bar and the middle of its lane
    body: list[str] = []
    y, host = top, None
    for lane in lanes:
        if lane.host != host:
            host = lane.host
            count = sum(len(ln.bars) for ln in lanes if ln.host == host)
            body.append(
                f'<text class="host" x="4" y="{y + 12:.1f}">{_e(_clip(host, 30))} · '
                f"{_count(count, 'ticket')}</text>"
            )
            y += 16
        body += _lane_svg(lane, scale, y, rh, large, on_path, where)
        y += rh
    x = scale.x
    links = [
        f'<path class="cpl" d="M{x(a.end):.1f},{ya:.1f} L{x(b.start):.1f},{yb:.1f}"/>'
        for (a, ya), (b, yb) in itertools.pairwise(where[t] for t in path if t in where)
    ]
    grid = _timeline_grid(scale, marks, top, y)
    w, h = scale.left + scale.width + 20, y + 22
    svg = (
        f'<svg width="{w:.0f}" height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}" role="img" '
        f'aria-label="timeline">{"".join(grid)}{"".join(body)}{"".join(links)}</svg>'
    )
    note = _timeline_note(s, len(bars), lanes, bool(marks), large)
    return f'{head}{_legend()}<p class="note">{note}</p><div class="scroll">{svg}</div></section>'


def _lane_svg(
    lane: Lane,
    scale: _Scale,
    y: float,
    rh: float,
    large: bool,
    on_path: set[str],
    where: dict[str, tuple[Bar, float]],
) -> list[str]:
    """One worker slot's lane at height ``y``: its label, its line and its bars.

    Each bar drawn is noted in ``where`` (its ticket -> the bar and its lane's middle).
    """
    x, left = scale.x, scale.left
    out: list[str] = []
    if rh >= 11:
        out.append(
            f'<text class="tick" x="{left - 6:.0f}" y="{y + rh * 0.7:.1f}" '
            f'text-anchor="end">{_e(_clip(lane.label, 28))}</text>'
        )
    out.append(
        f'<line class="lane" x1="{left}" y1="{y + rh:.1f}" x2="{left + scale.width}" '
        f'y2="{y + rh:.1f}"/>'
    )
    for bar, count, state_cls in _lane_bars(lane, large, scale.total / scale.width, on_path):
        row = bar.row
        x1, x2 = x(bar.start), max(x(bar.end), x(bar.start) + 1.0)
        cls = f"bar {state_cls}" + (" cp" if row.id in on_path else "")
        batch = f", batch {row.batch + 1}" if row.batch is not None and row.batch >= 0 else ""
        where_ran = row.slot or lane.host
        tip = f"{row.id}: {row.state}, {_secs(bar.end - bar.start)} on {where_ran}{batch}"
        ticket = f' data-ticket="{_e(row.id)}"'
        if count > 1:  # a large run's neighbouring bars, drawn as one span
            tip = f"{count} tickets from {row.id}, {_secs(bar.end - bar.start)} on {where_ran}"
            ticket = f' data-tickets="{count}"'
        out.append(
            f'<rect class="{cls}"{ticket} x="{x1:.1f}" '
            f'y="{y + rh * 0.12:.1f}" width="{x2 - x1:.1f}" height="{rh * 0.76:.1f}">'
            f"<title>{_e(tip)}</title></rect>"
        )
        if count == 1 and rh >= 14 and x2 - x1 >= 7 * min(len(row.id), 16) + 8:
            out.append(
                f'<text class="in" x="{x1 + 4:.1f}" y="{y + rh * 0.68:.1f}">'
                f"{_e(_clip(row.id, 16))}</text>"
            )
        where[row.id] = (bar, y + rh / 2)
    return out


def _timeline_grid(scale: _Scale, marks: list[BatchMark], top: float, bottom: float) -> list[str]:
    """The time ticks and the batches' start and end lines."""
    x = scale.x
    grid: list[str] = []
    for t in _ticks(scale.total):
        tx = x(scale.t0 + t)
        grid.append(
            f'<line class="grid" x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" '
            f'y2="{bottom:.1f}"/><text class="tick" x="{tx:.1f}" y="{bottom + 14:.1f}" '
            f'text-anchor="middle">{_secs(t)}</text>'
        )
    last = -1e9
    for mark in marks:
        if mark.end is not None:
            ex = x(mark.end)
            grid.append(
                f'<line class="batch end" x1="{ex:.1f}" y1="{top - 6}" x2="{ex:.1f}" '
                f'y2="{bottom:.1f}"><title>batch {mark.number} ends</title></line>'
            )
        if mark.start is not None:
            bx = x(mark.start)
            grid.append(
                f'<line class="batch" x1="{bx:.1f}" y1="{top - 14}" x2="{bx:.1f}" '
                f'y2="{bottom:.1f}"><title>batch {mark.number} starts</title></line>'
            )
            if bx - last >= 30:
                grid.append(
                    f'<text class="tick" x="{bx + 2:.1f}" y="{top - 16}">b{mark.number}</text>'
                )
                last = bx
    return grid


def _timeline_note(s: RunSummary, ran: int, lanes: list[Lane], marked: bool, large: bool) -> str:
    idle = len(s.rows) - ran
    hosts = len({lane.host for lane in lanes})
    note = (
        f"{_count(ran, 'ticket')} ran on {_count(len(lanes), 'worker slot')} of "
        f"{_count(hosts, 'host')}{f' ({idle} never ran)' if idle else ''}. One lane per "
        "worker slot (node name and pool process index); blue outlines and links: the "
        "critical path; "
    )
    note += (
        "dashed lines: batch starts, dotted: batch ends."
        if marked
        else "no batch boundaries (eager schedule, or no batch was recorded)."
    )
    if large:
        note += " Bars less than a pixel apart on a lane are drawn as one span."
    return note


def _lane_bars(
    lane: Lane, large: bool, min_gap: float, on_path: set[str]
) -> Iterable[tuple[Bar, int, str]]:
    """The bars drawn on a lane: (bar, tickets it stands for, CSS class of the outcome)."""
    if large:
        return merged_lane(lane, min_gap, on_path)
    return ((bar, 1, _cls(bar.row.state)) for bar in lane.bars)


def _critical_path(s: RunSummary, plan: dict[str, Any]) -> str:
    head = '<section id="critical-path"><h2>Critical path</h2>'
    path = _critical_ids(s, plan)
    if not path:
        return head + '<p class="note">No ticket to run.</p></section>'
    rows = {r.id: r for r in s.rows}
    items: list[str] = []
    ran = 0.0
    for tid in path:
        row = rows.get(tid)
        state = row.state if row else Phase.PENDING.value
        dur = row.duration_s if row else None
        ran += dur or 0.0
        items.append(
            f'<li><span class="chip {_cls(state)}" title="{_e(state)}">{_e(tid)}</span> '
            f"{_secs(dur)}</li>"
        )
    estimate = plan.get("critical_path_seconds")
    planned = f" (planned {_secs(float(estimate))})" if estimate is not None else ""
    share = f", {ran / s.wall_s:.0%} of the wall time" if s.wall_s > 0 else ""
    total = f"<p>{_count(len(path), 'ticket')}; total {_secs(ran)}{planned}{share}.</p>"
    return f'{head}{total}<ol class="cp">{"".join(items)}</ol></section>'


@dataclass(slots=True)
class _GraphLayout:
    """Where each node of the plan's graph goes: one column per level (wrapped when tall)."""

    pos: dict[str, tuple[float, float]]
    heads: list[str]  # the columns' titles, as SVG
    columns: int  # drawn columns, wrapped ones included
    step: float  # pixels between columns
    pitch: float  # pixels between rows
    tallest: int  # rows of the tallest column
    node_w: float
    labelled: bool

    @property
    def node_h(self) -> float:
        return self.pitch * 0.7

    def edge(self, a: str, b: str, cls: str) -> str:
        (xa, ya), (xb, yb) = self.pos[a], self.pos[b]
        x1, y1, x2, y2 = xa + self.node_w, ya + self.node_h / 2, xb, yb + self.node_h / 2
        mid = (x1 + x2) / 2
        return (
            f'<path class="{cls}" d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} '
            f'{mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"/>'
        )


_GRAPH_TOP = 30.0


def _graph_layout(columns: list[tuple[str, list[str]]]) -> _GraphLayout:
    tallest = min(_ROWS_PER_COLUMN, max(len(ids) for _, ids in columns))
    subcols = sum(-(-len(ids) // _ROWS_PER_COLUMN) for _, ids in columns)
    pitch = max(4.0, min(26.0, 1800 / tallest))
    labelled = pitch >= 16 and subcols <= 40
    if labelled:
        node_w, step = 128.0, 184.0
    else:
        pitch = min(pitch, 12.0)
        step = max(6.0, min(48.0, 2400 / subcols))
        node_w = step * 0.45
    pos: dict[str, tuple[float, float]] = {}
    heads: list[str] = []
    col, last_end = 0, -1e9
    for name, ids in columns:
        cx = 10 + col * step
        if cx >= last_end:
            text = f"{name} · {len(ids)}"
            heads.append(f'<text class="host" x="{cx:.1f}" y="16">{_e(text)}</text>')
            last_end = cx + 7 * len(text)
        for i, tid in enumerate(ids):
            sub, k = divmod(i, _ROWS_PER_COLUMN)
            pos[tid] = (cx + sub * step, _GRAPH_TOP + k * pitch)
        col += -(-len(ids) // _ROWS_PER_COLUMN)
    return _GraphLayout(pos, heads, col, step, pitch, tallest, node_w, labelled)


def _graph(s: RunSummary, plan: dict[str, Any]) -> str:
    head = '<section id="graph"><h2>Graph</h2>'
    if is_large(s):
        return batch_graph(s, plan, _e, _legend(), head)
    levels = [[str(t) for t in lv] for lv in plan.get("levels") or s.batches]
    columns = [(f"level {n}", lv) for n, lv in enumerate(levels, 1) if lv]
    blocked = [str(t) for t in plan.get("blocked", [])]
    if blocked:
        columns.append(("blocked", blocked))
    if not columns:
        return head + '<p class="note">No ticket in the plan.</p></section>'
    layout = _graph_layout(columns)
    path = _critical_ids(s, plan)
    edges, skipped = _graph_edges(layout, plan.get("deps", {}), path)
    nodes = _graph_nodes(layout, {r.id: r.state for r in s.rows}, set(path))
    w = 20 + layout.columns * layout.step
    h = _GRAPH_TOP + layout.tallest * layout.pitch + 10
    svg = (
        f'<svg width="{w:.0f}" height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}" role="img" '
        f'aria-label="graph">{"".join(layout.heads)}{"".join(edges)}{"".join(nodes)}</svg>'
    )
    note = "Columns are levels; blue edges and outlines: the critical path."
    if skipped:
        note += f" {skipped} further dependency edges are not drawn."
    return f'{head}{_legend()}<p class="note">{note}</p><div class="scroll">{svg}</div></section>'


def _graph_edges(
    layout: _GraphLayout, deps: dict[str, list[str]], path: list[str]
) -> tuple[list[str], int]:
    """The dependency edges drawn (at most ``_EDGE_CAP``, then the critical path's) and
    how many were left out."""
    pos = layout.pos
    crit = {(a, b) for a, b in itertools.pairwise(path) if a in pos and b in pos}
    edges: list[str] = []
    skipped = 0
    for tid, names in deps.items():
        for dep in names:
            if (dep, tid) in crit or dep not in pos or tid not in pos:
                continue
            if len(edges) < _EDGE_CAP:
                edges.append(layout.edge(dep, tid, "e"))
            else:
                skipped += 1
    edges += [layout.edge(a, b, "ce") for a, b in sorted(crit)]
    return edges, skipped


def _graph_nodes(layout: _GraphLayout, state: dict[str, str], on_path: set[str]) -> list[str]:
    node_w, node_h = layout.node_w, layout.node_h
    nodes: list[str] = []
    for tid, (nx, ny) in layout.pos.items():
        st = state.get(tid, Phase.PENDING.value)
        cls = _cls(st) + (" cp" if tid in on_path else "")
        nodes.append(
            f'<rect class="{cls}" x="{nx:.1f}" y="{ny:.1f}" width="{node_w:.1f}" '
            f'height="{node_h:.1f}" rx="2"><title>{_e(tid)}: {_e(st)}</title></rect>'
        )
        if layout.labelled:
            nodes.append(
                f'<text class="in" x="{nx + 4:.1f}" y="{ny + node_h * 0.72:.1f}">'
                f"{_e(_clip(tid, 17))}</text>"
            )
    return nodes


def _is_eager(s: RunSummary) -> bool:
    return s.info.options.eager


def _has_reason(row: TicketRow) -> bool:
    return row.state in (Phase.DEFERRED, Phase.BLOCKED)


def _html_table(heads: tuple[str, ...], rows: list[str]) -> str:
    cells = "".join(f"<th>{h}</th>" for h in heads)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _table(s: RunSummary) -> str:
    rows: list[str] = []
    listed: Iterable[tuple[int, TicketRow]] = enumerate(s.rows)
    left_out = 0
    if is_large(s):
        listed, left_out = table_rows(s)
    for n, r in listed:
        first = r.reason.splitlines()[0] if r.reason.strip() else ""
        reason = _e(_clip(first, 140))
        if _has_reason(r):
            reason += f' <a href="#reason-{n}">full</a>'
        batch = str(r.batch + 1) if r.batch is not None and r.batch >= 0 else "—"
        rows.append(
            f'<tr id="ticket-{n}"><td><code>{_e(r.id)}</code></td><td>{_chip(r.state)}</td>'
            f'<td class="n">{batch}</td><td>{_e(r.slot or r.host or "—")}</td>'
            f'<td class="n">{r.attempts}</td><td class="n">{_secs(r.duration_s)}</td>'
            f'<td><code>{_e(r.commit[:12] or "—")}</code></td><td class="r">{reason}</td></tr>'
        )
    heads = ("ticket", "state", "batch", "slot", "attempts", "duration", "commit", "reason")
    note = ""
    if left_out:
        note = (
            f'<p class="note">The tickets that did not complete and those on the critical '
            f"path; {left_out} more are not listed (<code>sage-submit status "
            f"{_e(s.info.run_id)} --json</code> lists every ticket).</p>"
        )
    return (
        f'<section id="tickets"><h2>Tickets ({len(s.rows)})</h2>{note}'
        f"{_html_table(heads, rows)}</section>"
    )


def _reasons(s: RunSummary, plan: dict[str, Any]) -> str:
    out = ['<section id="reasons"><h2>Deferred and blocked</h2>']
    rows: list[str] = []
    for n, r in enumerate(s.rows):
        if _has_reason(r) and len(rows) < TABLE_ROWS:
            text = _e(r.reason) if r.reason else '<span class="note">no reason recorded</span>'
            rows.append(
                f'<tr id="reason-{n}"><td><code>{_e(r.id)}</code></td><td>{_chip(r.state)}</td>'
                f'<td class="n">{r.attempts}</td><td class="r"><pre>{text}</pre></td></tr>'
            )
    if rows:
        out.append(_html_table(("ticket", "state", "attempts", "reason"), rows))
    earlier = [str(t) for t in plan.get("deferred", [])]
    if earlier:
        ids = ", ".join(f"<code>{_e(t)}</code>" for t in earlier)
        out.append(f"<p>DEFERRED before this run and not retried: {ids}.</p>")
    if len(out) == 1:
        out.append('<p class="note">None: every ticket completed.</p>')
    return "".join(out) + "</section>"


# -- the page ----------------------------------------------------------------------------


def render_html(
    summary: RunSummary,
    plan: dict[str, Any],
    batch_records: list[dict[str, Any]] | None = None,
) -> str:
    """The report page of a run, from its summary, the plan stored with it and its batches.

    ``batch_records`` (each batch's record: ``sent`` and ``ended`` times) give
    the timeline its batch boundaries; without them each batch starts when
    its first ticket did.
    """
    marks = [] if _is_eager(summary) else batch_marks(batch_records or [], summary.rows)
    title = f"sage-tasks run {summary.info.run_id}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
            _header(summary),
            _metrics(summary, plan),
            _timeline(summary, plan, marks),
            _critical_path(summary, plan),
            _graph(summary, plan),
            _table(summary),
            _reasons(summary, plan),
            "</body></html>",
            "",
        ]
    )


def write_report(store: RunStore, run_id: str, path: Path) -> None:
    """Write the report of run ``run_id`` to ``path``, atomically.

    Raises :class:`UnknownRun` when Redis does not know the run (never
    submitted, or expired), and :class:`ConfigError` when ``path`` cannot be
    written.
    """
    loaded = load_run(store, run_id)
    if loaded is None:
        raise UnknownRun(f"unknown run {run_id!r} (never submitted, or its record expired)")
    summary, plan = loaded
    batches = [store.batch(run_id, n) for n in range(len(summary.batches))]
    with gc_paused():  # a bar, a span, a string per ticket: nothing the collector would free
        page = render_html(summary, plan, batches)
    target = Path(path)
    try:
        _write_atomic(target, page.encode("utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report to {target}: {exc.strerror or exc}", path=str(target)
        ) from None


def _write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old page or the new, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
