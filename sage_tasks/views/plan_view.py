"""The plan as people read it: banner, batches, critical path, blocked tickets, statistics.

Plain lines with a little colour: on a terminal the styles show, in a log
file (no tty) rich drops them and the text stays aligned and greppable.
Long plans are shortened (the first and last batches, the first ids of a
batch) so a 100k-ticket dry run still prints a page, not a book.
"""

from __future__ import annotations

from rich.console import Console
from rich.rule import Rule
from rich.text import Text

from sage_tasks.core.estimate import format_duration
from sage_tasks.core.plan import Plan

#: batches shown before the list is cut (the last few are always shown)
MAX_BATCHES = 40
_TAIL_BATCHES = 5
#: ids shown on one batch line
MAX_IDS = 10
#: tickets of the critical path shown before it is cut in the middle
MAX_PATH = 16


def _ids(ids: list[str], limit: int = MAX_IDS) -> str:
    if len(ids) <= limit:
        return ", ".join(ids)
    return ", ".join(ids[:limit]) + f", ... ({len(ids) - limit} more)"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "0%"


def mode_line(plan: Plan) -> str:
    """The banner's run mode, as the seed printed it."""
    if plan.parallel is not None:
        workers = "worker" if plan.parallel == 1 else "workers"
        return f"PARALLEL EXECUTION: {plan.parallel} {workers} (groups of at most {plan.parallel})"
    return "LEVEL EXECUTION: one group per dependency level"


def _line(console: Console, label: str, body: str, style: str = "") -> None:
    text = Text(f"{label:<16}", style="bold")
    text.append(body, style=style)
    console.print(text, soft_wrap=True)


def render_plan(plan: Plan, console: Console, *, title: str, show_all: bool = False) -> None:
    """Print ``plan`` for people: banner, one line per batch, path, blocked, statistics.

    A long plan is cut (first and last batches, first ids) unless ``show_all``.
    """
    console.print(Rule(Text(title, style="bold")))
    console.print(Text(mode_line(plan), style="bold cyan"), soft_wrap=True)
    _line(console, "Tickets", _counts_line(plan))
    if plan.links is not None:
        _line(console, "Index", plan.links.describe())
    console.print()
    _render_batches(plan, console, show_all)
    console.print()
    if plan.critical_path:
        _line(console, "Critical path", _path_line(plan, show_all))
    if plan.blocked:
        _line(console, "Blocked", blocked_line(plan), style="yellow")
    if plan.deferred:
        _line(console, "Deferred", f"{len(plan.deferred)}: {_ids(plan.deferred, 20)}", "yellow")
    if plan.serialized:
        _line(console, "Paths", serialized_line(plan), "yellow")
    _render_stats(plan, console)


def _counts_line(plan: Plan) -> str:
    counts = [f"{plan.tickets} in the index", f"{plan.to_run} to run"]
    if plan.completed:
        counts.append(f"{len(plan.completed)} completed")
    if plan.deferred:
        counts.append(f"{len(plan.deferred)} deferred (not re-run)")
    if plan.blocked:
        counts.append(f"{len(plan.blocked)} blocked")
    return ", ".join(counts)


def _render_batches(plan: Plan, console: Console, show_all: bool) -> None:
    """One line per batch; past ``MAX_BATCHES`` only the first and last ones."""
    total = len(plan.batches)
    if not total:
        console.print(Text("Nothing to run.", style="yellow"))
    shown: list[int] | range = range(total)
    cut = total > MAX_BATCHES and not show_all
    if cut:
        shown = [*range(MAX_BATCHES - _TAIL_BATCHES), *range(total - _TAIL_BATCHES, total)]
    width = len(str(total))
    for n in shown:
        if cut and n == total - _TAIL_BATCHES:
            hidden = total - MAX_BATCHES
            console.print(Text(f"  ... {hidden} more batches ...", style="dim"))
        batch = plan.batches[n]
        text = Text(f"Batch {n + 1:>{width}}", style="bold")
        text.append(f"  level {plan.batch_levels[n]:<{width}}  ", style="dim")
        text.append(f"{len(batch):>4} ticket{'s' if len(batch) != 1 else ' '}  ")
        text.append(_ids(batch, len(batch) if show_all else MAX_IDS))
        console.print(text, soft_wrap=True)


def _path_line(plan: Plan, show_all: bool) -> str:
    """The critical path with its length; a long one cut in the middle unless ``show_all``."""
    path = plan.critical_path
    if len(path) > MAX_PATH and not show_all:
        half = MAX_PATH // 2
        path = [*path[:half], f"... {len(path) - MAX_PATH} more ...", *path[-half:]]
    length = f"{len(plan.critical_path)} tickets"
    if plan.critical_path_seconds is not None:
        length += f", about {format_duration(plan.critical_path_seconds)}"
    return f"({length}) " + " -> ".join(path)


def blocked_line(plan: Plan) -> str:
    """The tickets blocked from the start, each with why when the plan says."""
    if not plan.blocked_reasons:
        return (
            f"{len(plan.blocked)}: {_ids(plan.blocked, 20)} "
            "(they depend on a DEFERRED ticket that is not re-run)"
        )
    shown = [
        f"{t} ({plan.blocked_reasons[t]})" if t in plan.blocked_reasons else t
        for t in plan.blocked[:MAX_IDS]
    ]
    more = len(plan.blocked) - len(shown)
    return f"{len(plan.blocked)}: {', '.join(shown)}" + (f", ... ({more} more)" if more else "")


def serialized_line(plan: Plan) -> str:
    """Where overlapping ``paths`` keep tickets that could run together apart."""
    batch_of = plan.batch_of
    shown = [
        f"{a} (batch {batch_of[a] + 1}) & {b} (batch {batch_of[b] + 1})"
        for a, b in plan.serialized[:MAX_IDS]
    ]
    more = len(plan.serialized) - len(shown)
    tail = f", ... ({more} more)" if more > 0 else ""
    return (
        f"{len(plan.serialized)} pair{'s' if len(plan.serialized) != 1 else ''} of tickets "
        f"whose paths overlap never run at once: {', '.join(shown)}{tail}"
    )


def _render_stats(plan: Plan, console: Console) -> None:
    stats = plan.stats
    _line(
        console,
        "Batches",
        f"{stats.batches} in {stats.levels} levels; widest batch {stats.widest_batch}, "
        f"widest level {stats.widest_level}",
    )
    _line(
        console,
        "Parallelism",
        f"{_share(stats.independent, plan.to_run)} of the tickets to run can start at once "
        f"({stats.independent} of {plan.to_run}); recommended workers: "
        f"{stats.recommended_workers}",
    )
    workers = f"{stats.workers} worker{'s' if stats.workers != 1 else ''}"
    if stats.sequential_seconds is not None and stats.parallel_seconds is not None:
        estimate = (
            f"{format_duration(stats.sequential_seconds)} sequential, "
            f"{format_duration(stats.parallel_seconds)} with {workers}"
        )
        if stats.estimated < plan.to_run:
            estimate += f" ({stats.estimated} of {plan.to_run} tickets have an estimate)"
    else:
        estimate = (
            f"{stats.sequential_steps} ticket-steps sequential, "
            f"{stats.parallel_steps} with {workers} (no estimates)"
        )
    if stats.speedup is not None:
        estimate += f"; speedup {stats.speedup:.1f}x"
    _line(console, "Estimated time", estimate)
    if plan.schedules is not None:
        _line(console, "Schedules", schedules_line(plan))


def schedules_line(plan: Plan) -> str:
    """Both schedules' estimated makespans against the bound no schedule beats."""
    est = plan.schedules
    assert est is not None

    def show(value: float) -> str:
        return format_duration(value) if est.unit == "seconds" else f"{value:g} steps"

    def ratio(value: float) -> str:
        return f" ({value / est.lower_bound:.2f}x the bound)" if est.lower_bound else ""

    slots = f"{est.slots} slot{'s' if est.slots != 1 else ''}"
    return (
        f"levels {show(est.levels)}{ratio(est.levels)}, eager {show(est.eager)}"
        f"{ratio(est.eager)} on {slots}; bound {show(est.lower_bound)} "
        "(max of critical path, work / slots)"
    )
