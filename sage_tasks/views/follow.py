"""``--wait``: follow a run in Redis with a progress display, then its summary."""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from sage_tasks.errors import BrokerUnavailable, RunLost
from sage_tasks.store.runstate import Phase, RunInfo, RunStatus, RunStore
from sage_tasks.views.summary import RunSummary, TicketRow, load_summary

#: how long ``--wait`` rides out an unreachable broker before giving up (exit 3)
RECONNECT_WINDOW_S = 120.0


def progress_line(
    info: RunInfo,
    counts: Mapping[str, int],
    running: list[str],
    total: int,
    hosts: dict[str, str] | None = None,
) -> str:
    """One line of where a run stands; ``counts``: tickets per final state; ``hosts``:
    ticket id -> its host and heartbeat age, when known."""
    if info.status == RunStatus.SUBMITTED:
        return (
            f"waiting for the commit worker on queue '{info.commit_queue}' "
            "(sage-worker commit --repo PATH)"
        )
    if info.options.eager:
        where = "eager schedule"
    else:
        where = f"batch {info.batch + 1 if info.batch >= 0 else 0}/{info.batches}"
    parts = [where, f"{sum(counts.values())}/{total} done"]
    if running:
        names = [f"{t} {hosts[t]}" if hosts and t in hosts else t for t in running[:6]]
        shown = ", ".join(names) + (" ..." if len(running) > 6 else "")
        parts.append(f"running: {shown}")
    deferred = counts.get(Phase.DEFERRED, 0)
    blocked = counts.get(Phase.BLOCKED, 0)
    if deferred:
        parts.append(f"deferred: {deferred}")
    if blocked:
        parts.append(f"blocked: {blocked}")
    return " | ".join(parts)


def running_where(store: RunStore, run_id: str, ticket_ids: list[str]) -> dict[str, str]:
    """Ticket id -> ``on HOST, beat Ns ago`` for the running tickets shown (one round trip)."""
    if not ticket_ids:
        return {}
    now = time.time()
    out = {}
    try:
        records = store.tickets(run_id, ticket_ids)
    except redis.exceptions.RedisError:  # the follower rides out the broker's trouble
        return {}
    for tid, rec in records.items():
        host = rec.get("host", "")
        try:
            age = f", beat {max(0.0, now - float(rec.get('heartbeat') or '')):.0f}s ago"
        except ValueError:
            age = ""
        if host:
            out[tid] = f"(on {host}{age})"
    return out


def _ticket_table(rows: list[TicketRow], title: Text, console: Console, now: float | None) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("ticket")
    table.add_column("state")
    table.add_column("host")
    table.add_column("attempts", justify="right")
    table.add_column("duration", justify="right")
    table.add_column("reason", overflow="fold")
    colour = {"COMPLETED": "green", "DEFERRED": "yellow", "BLOCKED": "red", "CANCELLED": "yellow"}
    for r in rows:
        c = colour.get(r.state, "white")
        # hosts and reasons (executor output) are text, never markup
        table.add_row(
            r.id,
            f"[{c}]{r.state}[/]",
            Text(r.host),
            str(r.attempts),
            _duration(r, now),
            Text(_first_line(r.reason)),
        )
    console.print(table)


def _duration(row: TicketRow, now: float | None) -> str:
    running = row.running_for(now) if now is not None else None
    if running is not None:
        return f"running {running:.1f}s"
    return f"{row.duration_s:.1f}s" if row.duration_s is not None else ""


def _first_line(reason: str) -> str:
    return reason.splitlines()[0][:160] if reason else ""


def write_rows(rows: list[TicketRow], console: Console, now: float | None) -> None:
    """Every ticket as one plain aligned line (``--all`` on a large run), written in chunks."""
    width = max((len(r.id) for r in rows), default=6)
    host = max((len(r.host) for r in rows), default=4)
    lines = [f"{'ticket':<{width}}  {'state':<9}  {'host':<{host}}  attempts  duration  reason"]
    for r in rows:
        lines.append(
            f"{r.id:<{width}}  {r.state:<9}  {r.host:<{host}}  {r.attempts:>8}  "
            f"{_duration(r, now):>8}  {_CONTROL.sub('?', _first_line(r.reason))}"
        )
        if len(lines) >= 5000:
            console.file.write("\n".join(lines) + "\n")
            lines = []
    if lines:
        console.file.write("\n".join(lines) + "\n")


def notable_rows(rows: list[TicketRow]) -> tuple[list[TicketRow], int]:
    """The rows a person looks for first (running, failed, then waiting), a few of each kind.

    Returns them in the run's order and how many rows were left out.
    """
    kinds: dict[str, list[TicketRow]] = {}
    for r in rows:
        kind = r.state if r.state in _NOTABLE else ""
        if kind and len(kinds.setdefault(kind, [])) < ROWS_OF_A_KIND:
            kinds[kind].append(r)
    keep = {id(r) for shown in kinds.values() for r in shown}
    shown = [r for r in rows if id(r) in keep]
    return shown, len(rows) - len(shown)


#: states a bounded table lists (COMPLETED and PENDING tickets are counted, not listed)
_NOTABLE = frozenset(
    {Phase.RUNNING, Phase.RAN, Phase.DEFERRED, Phase.BLOCKED, Phase.QUEUED, Phase.CANCELLED}
)
#: characters a plain line never carries (a reason is executor output)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: batches shown at each end of a large run's batch list
EDGE_BATCHES = 3
#: tickets of the critical path shown before it is cut in the middle
PATH_SHOWN = 16


def render_overview(summary: RunSummary, console: Console) -> None:
    """A large run in a page: its first and last batches and its critical path, counted."""
    state = {r.id: r.state for r in summary.rows}
    batches = summary.batches
    shown = list(range(len(batches)))
    if len(batches) > 2 * EDGE_BATCHES + 1:
        shown = [*range(EDGE_BATCHES), -1, *range(len(batches) - EDGE_BATCHES, len(batches))]
    width = len(str(len(batches)))
    for n in shown:
        if n < 0:
            hidden = len(batches) - 2 * EDGE_BATCHES
            console.print(Text(f"  ... {hidden} more batches ...", style="dim"))
            continue
        counts = Counter(state.get(t, Phase.PENDING.value) for t in batches[n])
        parts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items()))
        console.print(Text(f"batch {n + 1:>{width}}  {len(batches[n]):>6} tickets: {parts}"))
    path = summary.critical_path
    if path:
        cut = path
        if len(path) > PATH_SHOWN:
            half = PATH_SHOWN // 2
            cut = [*path[:half], f"... {len(path) - PATH_SHOWN} more ...", *path[-half:]]
        done = sum(1 for t in path if state.get(t) == Phase.COMPLETED)
        console.print(
            Text(f"critical path ({len(path)} tickets, {done} completed): " + " -> ".join(cut))
        )


def follow(
    store_factory: Callable[[], RunStore],
    run_id: str,
    *,
    console: Console,
    show: bool = True,
    poll_s: float = 0.5,
    on_poll: Callable[[], None] | None = None,
    last_wave_poll_s: float | None = None,
) -> RunSummary:
    """Poll the run until it ends; raises :class:`RunLost` when its record disappears.

    ``last_wave_poll_s``: how often to poll once every ticket left is running or
    ended (the run's end is then one ticket away); default ``poll_s``.
    """
    store = store_factory()
    failing_since: float | None = None
    last_line = ""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=False,
        disable=not (show and console.is_terminal),
    )
    with progress:
        task = progress.add_task("run", total=None, detail="")
        while True:
            if on_poll is not None:
                on_poll()
            try:
                info, counts, running = store.progress_counts(run_id)
                summary = load_summary(store, run_id) if info and info.ended else None
                failing_since = None
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > RECONNECT_WINDOW_S:
                    raise BrokerUnavailable(
                        f"lost the broker while following run {run_id}: {exc}"
                    ) from None
                time.sleep(1.0)
                with contextlib.suppress(BrokerUnavailable):  # still down: keep trying
                    store = store_factory()
                continue
            if info is None:
                raise RunLost(
                    f"run {run_id} is gone from Redis (the broker lost its data or the run "
                    "expired); submit again with the same --branch to resume it"
                )
            done = sum(counts.values())
            total = max(info.options.planned, done)
            hosts = running_where(store, run_id, running[:6])
            line = progress_line(info, counts, running, total, hosts)
            progress.update(
                task, total=total, completed=done, description=f"run {run_id}", detail=line
            )
            if show and not console.is_terminal and line != last_line:
                console.print(f"  {line}", markup=False, highlight=False)
            last_line = line
            if summary is not None and summary.finished:
                return summary
            wait = poll_s
            if last_wave_poll_s is not None and total - done <= len(running):
                wait = min(poll_s, last_wave_poll_s)
            time.sleep(wait)


#: tickets a person's ticket table lists in full; above it (without ``--all``) the table
#: keeps the tickets that run or failed, and batches and the critical path say the rest
TABLE_ROWS = 60
#: rows of one kind (running, deferred, blocked, waiting) listed in a bounded table
ROWS_OF_A_KIND = 15


def render_summary(
    summary: RunSummary, console: Console, *, now: float | None = None, show_all: bool = False
) -> None:
    """The ticket table, then (for a run that ended) the outcome counts and the metrics.

    ``now`` (the time of a look at a run still going) shows how long each
    running ticket has been running. A large run (more than
    :data:`TABLE_ROWS` tickets) shows its batches, critical path and the
    tickets that run or failed, unless ``show_all``; every ticket is then a
    plain line rather than a table cell, so 100,000 of them print in a second.
    """
    info = summary.info
    console.print()
    if info.status == RunStatus.CANCELLED:
        console.print(Text(f"run {info.run_id} CANCELLED ({info.error})", style="bold yellow"))
    elif info.error:
        failed = Text(f"run {info.run_id} failed: ", style="bold red")
        console.print(failed + Text(info.error), highlight=False)
    title = Text(f"run {info.run_id} on {info.branch}")
    if len(summary.rows) <= TABLE_ROWS:
        _ticket_table(summary.rows, title, console, now)
    elif show_all:
        console.print(title, highlight=False)
        write_rows(summary.rows, console, now)
    else:
        render_overview(summary, console)
        shown, left_out = notable_rows(summary.rows)
        if shown:
            _ticket_table(shown, title, console, now)
        console.print(Text(f"{left_out} more tickets not listed; --all lists every ticket"))
    console.print(
        f"[bold]completed[/] {len(summary.completed)}  [bold]deferred[/] {len(summary.deferred)}"
        f"  [bold]blocked[/] {len(summary.blocked)}",
        highlight=False,
    )
    if not summary.finished:
        return
    speed = f"{summary.speedup:.2f}x" if summary.speedup is not None else "n/a"
    eff = f"{summary.efficiency:.0%}" if summary.efficiency is not None else "n/a"
    console.print(
        f"[bold]wall time[/] {summary.wall_s:.1f}s  [bold]summed ticket time[/] "
        f"{summary.ticket_time_s:.1f}s  [bold]speedup[/] {speed}  "
        f"[bold]parallel efficiency[/] {eff} (at most {summary.max_parallel} at once)",
        highlight=False,
    )
    if info.head:
        console.print(f"[bold]branch[/] {info.branch} at {info.head[:12]}", highlight=False)
