"""``--wait``: follow a run in Redis with a progress display, then its summary."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from sage_tasks.errors import BrokerUnavailable, RunLost
from sage_tasks.store.runstate import Phase, RunInfo, RunStatus, RunStore
from sage_tasks.views.summary import RunSummary, load_summary

#: how long ``--wait`` rides out an unreachable broker before giving up (exit 3)
RECONNECT_WINDOW_S = 120.0


def progress_line(info: RunInfo, finals: dict[str, str], running: list[str], total: int) -> str:
    if info.status == RunStatus.SUBMITTED:
        return (
            f"waiting for the commit worker on queue '{info.commit_queue}' "
            "(sage-worker commit --repo PATH)"
        )
    if info.extra.get("schedule") == "eager":
        where = "eager schedule"
    else:
        where = f"batch {info.batch + 1 if info.batch >= 0 else 0}/{info.batches}"
    parts = [where, f"{len(finals)}/{total} done"]
    if running:
        shown = ", ".join(running[:6]) + (" ..." if len(running) > 6 else "")
        parts.append(f"running: {shown}")
    deferred = sum(1 for v in finals.values() if v == Phase.DEFERRED)
    blocked = sum(1 for v in finals.values() if v == Phase.BLOCKED)
    if deferred:
        parts.append(f"deferred: {deferred}")
    if blocked:
        parts.append(f"blocked: {blocked}")
    return " | ".join(parts)


def follow(
    store_factory: Callable[[], RunStore],
    run_id: str,
    *,
    console: Console,
    show: bool = True,
    poll_s: float = 0.5,
    on_poll: Callable[[], None] | None = None,
) -> RunSummary:
    """Poll the run until it ends; raises :class:`RunLost` when its record disappears."""
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
                info, finals, running = store.progress(run_id)
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
            total = max(int(info.extra.get("planned", info.to_run)), len(finals))
            line = progress_line(info, finals, running, total)
            progress.update(
                task, total=total, completed=len(finals), description=f"run {run_id}", detail=line
            )
            if show and not console.is_terminal and line != last_line:
                console.print(f"  {line}", markup=False, highlight=False)
            last_line = line
            if summary is not None and summary.finished:
                return summary
            time.sleep(poll_s)


def render_summary(summary: RunSummary, console: Console, *, now: float | None = None) -> None:
    """The ticket table, then (for a run that ended) the outcome counts and the metrics.

    ``now`` (the time of a look at a run still going) shows how long each
    running ticket has been running.
    """
    info = summary.info
    console.print()
    if info.error:
        failed = Text(f"run {info.run_id} failed: ", style="bold red")
        console.print(failed + Text(info.error), highlight=False)
    table = Table(
        title=Text(f"run {info.run_id} on {info.branch}"), show_header=True, header_style="bold"
    )
    table.add_column("ticket")
    table.add_column("state")
    table.add_column("host")
    table.add_column("attempts", justify="right")
    table.add_column("duration", justify="right")
    table.add_column("reason", overflow="fold")
    colour = {"COMPLETED": "green", "DEFERRED": "yellow", "BLOCKED": "red"}
    for r in summary.rows:
        c = colour.get(r.state, "white")
        dur = f"{r.duration_s:.1f}s" if r.duration_s is not None else ""
        running = r.running_for(now) if now is not None else None
        if running is not None:
            dur = f"running {running:.1f}s"
        # hosts and reasons (executor output) are text, never markup
        table.add_row(
            r.id,
            f"[{c}]{r.state}[/]",
            Text(r.host),
            str(r.attempts),
            dur,
            Text(r.reason.splitlines()[0][:160] if r.reason else ""),
        )
    console.print(table)
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
