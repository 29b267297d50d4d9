"""``sage-submit status``: a run's state from its record, while it runs and after.

Without a run id it shows the latest run and, above it, a list of the latest
runs the broker knows. Everything comes from the run record in Redis, so it
works from any machine that reaches the broker, during a run and for as long
as the record is kept.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sage_tasks.errors import UnknownRun
from sage_tasks.store.runstate import FINAL_PHASES, Phase, RunStore
from sage_tasks.views.follow import progress_line, render_summary
from sage_tasks.views.output import Stream, write_json
from sage_tasks.views.summary import RunSummary, load_summary

#: how many runs ``status`` without a run id lists
RECENT_RUNS = 10


@dataclass
class RunLine:
    """One run in the list of latest runs."""

    run_id: str
    status: str
    branch: str
    created: float
    done: int
    planned: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def recent_runs(store: RunStore, count: int = RECENT_RUNS) -> list[RunLine]:
    """The latest runs, the latest first (runs whose record expired are left out)."""
    lines = []
    for run_id in store.recent(count):
        info = store.get(run_id)
        if info is None:
            continue
        planned = info.options.planned
        done = store.final_count(run_id)
        lines.append(RunLine(run_id, info.status, info.branch, info.created, done, planned))
    return lines


def running_for(summary: RunSummary, now: float) -> dict[str, float]:
    """Ticket id -> seconds its command has been running, for the tickets running now."""
    return {r.id: round(t, 3) for r in summary.rows if (t := r.running_for(now)) is not None}


def status_json(summary: RunSummary, now: float, runs: list[RunLine] | None) -> dict[str, Any]:
    """The summary of ``--wait --json``, with what a look at a live run adds.

    Its ticket list is a :class:`Stream`: written row by row as it is encoded.
    """
    data = summary.to_json(tickets=False)
    elapsed = running_for(summary, now)

    def tickets() -> Iterator[dict[str, Any]]:
        for row in summary.rows:
            ticket = row.to_json()
            ticket["running_s"] = elapsed.get(row.id)
            yield ticket

    data["tickets"] = Stream(tickets())
    # the batch being run, 0-based like each ticket's "batch" (None: eager, or not started)
    data["current_batch"] = summary.info.batch if summary.info.batch >= 0 else None
    data["schedule"] = summary.info.options.schedule.value
    data["running"] = sorted(elapsed)
    if runs is not None:
        data["runs"] = [r.to_json() for r in runs]
    return data


def render_runs(runs: list[RunLine], console: Console) -> None:
    table = Table(title="latest runs", show_header=True, header_style="bold")
    for name in ("run", "status", "branch", "submitted", "done"):
        table.add_column(name)
    for r in runs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
        table.add_row(r.run_id, r.status, Text(r.branch), when, f"{r.done}/{r.planned}")
    console.print(table)


def render_status(
    summary: RunSummary, console: Console, now: float, *, show_all: bool = False
) -> None:
    """Where the run stands, then its tickets (and its metrics once it has ended)."""
    info = summary.info
    counts = Counter(r.state for r in summary.rows if r.state in FINAL_PHASES)
    running = [r.id for r in summary.rows if r.state == Phase.RUNNING]
    total = max(info.options.planned, sum(counts.values()))
    console.print(f"run {info.run_id}: {info.status}", highlight=False)
    if not summary.finished:
        where = {
            r.id: f"(on {r.host}, beat {max(0.0, now - r.heartbeat):.0f}s ago)"
            for r in summary.rows
            if r.state == Phase.RUNNING and r.host and r.heartbeat is not None
        }
        line = progress_line(info, counts, running, total, where)
        console.print(Text("  " + line), highlight=False)
    render_summary(summary, console, now=now, show_all=show_all)


def show_status(
    store: RunStore,
    run_id: str | None,
    *,
    human: Console,
    out: Console,
    as_json: bool,
    show_all: bool = False,
) -> None:
    """``sage-submit status [RUN_ID] [--json]``; raises :class:`UnknownRun` (exit 2)."""
    runs = None if run_id else recent_runs(store)
    rid = run_id or (runs[0].run_id if runs else None)
    if rid is None:
        raise UnknownRun("no run is known to the broker")
    summary = load_summary(store, rid)
    if summary is None:
        raise UnknownRun(f"unknown run {rid!r}")
    now = time.time()
    if as_json:
        write_json(status_json(summary, now, runs))
        return
    if runs:
        render_runs(runs, human)
    render_status(summary, human, now, show_all=show_all)
