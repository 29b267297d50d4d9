"""The timeline's layout: which lane each ticket's bar goes on, where batches start and end.

A lane is one worker slot (a worker's node name and its pool process index,
as the run record names it: ``tickets@w1#2``), so bars on a lane never
overlap and idle slots show as gaps. Lanes are grouped by host. A record
without a slot (an older worker) or a slot whose bars do overlap (a ticket
delivered again) is packed into as many lanes as it needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sage_tasks.views.summary import TicketRow

UNKNOWN_HOST = "(unknown host)"
_SLOT = re.compile(r"^(?P<host>.*)#(?P<index>\d+)$")


@dataclass(frozen=True)
class Bar:
    """When one ticket's command ran."""

    row: TicketRow
    start: float
    end: float


@dataclass
class Lane:
    """One row of the timeline: a worker slot and the bars it ran, in order."""

    host: str
    label: str
    bars: list[Bar] = field(default_factory=list)


@dataclass(frozen=True)
class BatchMark:
    """When a batch was sent and when its barrier ended it (either may be unknown)."""

    number: int  # 1-based, as people count batches
    start: float | None
    end: float | None


def span(row: TicketRow) -> tuple[float, float] | None:
    """When the ticket's command ran: started to started + duration (or its end)."""
    if row.started is None:
        return None
    if row.duration_s is not None:
        return row.started, row.started + max(0.0, row.duration_s)
    if row.ended is not None and row.ended >= row.started:
        return row.started, row.ended
    return None


def bars_of(rows: Iterable[TicketRow]) -> list[Bar]:
    """A bar for every ticket whose command ran, by start time."""
    found = [Bar(r, *sp) for r in rows if (sp := span(r)) is not None]
    return sorted(found, key=lambda b: (b.start, b.row.id))


def _slot_label(host: str, slot: str) -> tuple[int, str]:
    """(sort key, label) of a slot under its host: ``slot 2`` for ``<host>#2``."""
    m = _SLOT.match(slot)
    if m is None:
        return 1 << 30, slot or "slot ?"
    index = int(m["index"])
    if m["host"] == host:
        return index, f"slot {index}"
    return index, slot


def _pack(bars: list[Bar]) -> list[list[Bar]]:
    """Bars into the fewest rows where none overlaps (first fit, bars sorted by start)."""
    rows: list[list[Bar]] = []
    for bar in bars:
        for row in rows:
            if row[-1].end <= bar.start + 1e-6:
                row.append(bar)
                break
        else:
            rows.append([bar])
    return rows


def lanes_of(bars: Sequence[Bar]) -> list[Lane]:
    """One lane per worker slot, grouped by host (hosts in order of their first bar)."""
    by_host: dict[str, dict[str, list[Bar]]] = {}
    for bar in bars:
        host = bar.row.host or UNKNOWN_HOST
        by_host.setdefault(host, {}).setdefault(bar.row.slot, []).append(bar)
    lanes: list[Lane] = []
    for host, slots in by_host.items():
        for slot in sorted(slots, key=lambda s: (_slot_label(host, s)[0], s)):
            packed = _pack(slots[slot])
            for n, items in enumerate(packed, 1):
                if not slot:
                    name = f"lane {n}"
                else:
                    label = _slot_label(host, slot)[1]
                    name = f"{label} ({n})" if len(packed) > 1 else label
                lanes.append(Lane(host, name, items))
    return lanes


def batch_marks(
    batch_records: Sequence[Mapping[str, Any]], rows: Iterable[TicketRow]
) -> list[BatchMark]:
    """Each batch's start and end: from its record, else from its tickets' start times.

    A run on the eager schedule has no batches (its tickets are queued with
    batch -1): no marks.
    """
    starts: dict[int, float] = {}
    for row in rows:
        if row.batch is not None and row.batch >= 0 and row.started is not None:
            starts[row.batch] = min(row.started, starts.get(row.batch, row.started))
    count = max(len(batch_records), max(starts, default=-1) + 1)
    marks: list[BatchMark] = []
    for index in range(count):
        record = batch_records[index] if index < len(batch_records) else {}
        start = _time(record.get("sent")) or starts.get(index)
        end = _time(record.get("ended"))
        if start is not None or end is not None:
            marks.append(BatchMark(index + 1, start, end))
    return marks


def _time(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value > 0 else None
