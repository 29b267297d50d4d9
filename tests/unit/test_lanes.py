"""The timeline's layout: lanes per worker slot, packing, batch boundaries."""

from __future__ import annotations

from typing import Any

from sage_tasks.views.lanes import UNKNOWN_HOST, bars_of, batch_marks, lanes_of
from sage_tasks.views.summary import TicketRow


def row(
    tid: str, start: float | None, dur: float | None, host: str = "", slot: str = "", **kw: Any
) -> TicketRow:
    return TicketRow(
        id=tid, state="COMPLETED", host=host, slot=slot, started=start, duration_s=dur, **kw
    )


def layout(rows: list[TicketRow]) -> list[tuple[str, str, list[str]]]:
    return [(ln.host, ln.label, [b.row.id for b in ln.bars]) for ln in lanes_of(bars_of(rows))]


def test_one_lane_per_slot_in_slot_order_grouped_by_host() -> None:
    rows = [
        row("A", 0, 2, "t@w1", "t@w1#2"),
        row("B", 0, 1, "t@w1", "t@w1#1"),
        row("C", 2, 1, "t@w1", "t@w1#1"),
        row("D", 1, 1, "t@w2", "t@w2#1"),
        row("E", 5, 1, "t@w1", "t@w1#10"),
    ]
    assert layout(rows) == [
        ("t@w1", "slot 1", ["B", "C"]),
        ("t@w1", "slot 2", ["A"]),
        ("t@w1", "slot 10", ["E"]),
        ("t@w2", "slot 1", ["D"]),
    ]


def test_tickets_that_never_ran_get_no_bar() -> None:
    rows = [row("A", None, None), row("B", 1, None), row("C", 1, None, ended=3.0)]
    assert [b.row.id for b in bars_of(rows)] == ["C"]


def test_overlapping_bars_of_one_slot_or_of_records_without_slot_are_packed_apart() -> None:
    rows = [
        row("A", 0, 5, "old"),
        row("B", 1, 1, "old"),
        row("C", 5, 1, "old"),  # starts as A ends: shares its lane
        row("D", 0, 3, "new", "new#1"),
        row("E", 2, 3, "new", "new#1"),  # a redelivery on the same slot
        row("F", 0, 1),
    ]
    assert layout(rows) == [
        ("old", "lane 1", ["A", "C"]),
        ("old", "lane 2", ["B"]),
        ("new", "slot 1 (1)", ["D"]),
        ("new", "slot 1 (2)", ["E"]),
        (UNKNOWN_HOST, "lane 1", ["F"]),
    ]


def test_a_slot_of_another_host_keeps_its_full_name() -> None:
    assert layout([row("A", 0, 1, "h1", "h2#3")]) == [("h1", "h2#3", ["A"])]


def test_batch_marks_come_from_batch_records_else_from_their_tickets() -> None:
    rows = [row("A", 3, 1, batch=0), row("B", 9, 1, batch=1), row("C", 12, 1, batch=2)]
    records = [{"sent": 2.0, "ended": 8.0}, {"sent": 8.5}]
    marks = [(m.number, m.start, m.end) for m in batch_marks(records, rows)]
    assert marks == [(1, 2.0, 8.0), (2, 8.5, None), (3, 12.0, None)]


def test_an_eager_run_has_no_batch_marks() -> None:
    rows = [row("A", 3, 1, batch=-1), row("B", 4, 1, batch=-1)]
    assert batch_marks([], rows) == []
