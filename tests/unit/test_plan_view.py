"""The plan as printed for people, on a terminal and in a plain log."""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console

from sage_tasks.core.index import IndexDocument
from sage_tasks.core.plan import Plan, build_plan
from sage_tasks.views.plan_view import MAX_BATCHES, render_plan


def t(tid: str, *deps: str, **fields: Any) -> dict[str, Any]:
    return {"id": tid, "dependencies": list(deps), "run": "true", **fields}


def plan_of(tickets: list[dict[str, Any]], **kwargs: Any) -> Plan:
    return build_plan(IndexDocument.loads(json.dumps({"tickets": tickets})), **kwargs)


def rendered(plan: Plan, *, terminal: bool = False) -> str:
    out = io.StringIO()
    if terminal:
        console = Console(file=out, width=100, force_terminal=True, color_system="standard")
    else:
        console = Console(file=out, width=100)
    render_plan(plan, console, title="sage-submit --dry-run")
    return out.getvalue()


SEED_LIKE = [
    t("TASK-001", estimate="1 hour"),
    t("TASK-002", "TASK-001", estimate="30 minutes"),
    t("TASK-003", "TASK-002", estimate="45 minutes"),
    t("TASK-007", estimate="1 hour"),
    t("TASK-008", "TASK-007", estimate="30 minutes"),
    t("TASK-013", estimate="15 minutes", priority="P0"),
    t("TASK-099", state="DEFERRED"),
    t("TASK-100", "TASK-099"),
    t("TASK-000", state="COMPLETED"),
]


def test_the_banner_names_the_mode_and_the_worker_count() -> None:
    assert "PARALLEL EXECUTION: 3 workers" in rendered(plan_of(SEED_LIKE, parallel=3))
    assert "LEVEL EXECUTION" in rendered(plan_of(SEED_LIKE))
    assert "sage-submit --dry-run" in rendered(plan_of(SEED_LIKE))


def test_each_batch_gets_one_line_with_its_level_count_and_ids() -> None:
    text = rendered(plan_of(SEED_LIKE, parallel=2))
    lines = [line for line in text.splitlines() if line.startswith("Batch ")]
    assert len(lines) == 4
    assert lines[0].split() == ["Batch", "1", "level", "1", "2", "tickets", "TASK-013,", "TASK-001"]
    assert "level 3" in lines[-1] and "1 ticket " in lines[-1] and "TASK-003" in lines[-1]


def test_the_critical_path_blocked_tickets_and_statistics_are_shown() -> None:
    text = rendered(plan_of(SEED_LIKE, parallel=2))
    assert "TASK-001 -> TASK-002 -> TASK-003" in text
    assert "about 2h 15m" in text
    assert "Blocked" in text and "TASK-100" in text
    assert "1 completed" in text and "1 deferred" in text
    assert "can start at once" in text and "recommended workers" in text
    assert "sequential" in text and "with 2 workers" in text


def test_a_plain_log_gets_no_escape_codes_and_a_terminal_gets_colour() -> None:
    plan = plan_of(SEED_LIKE)
    assert "\x1b[" not in rendered(plan)
    assert "\x1b[" in rendered(plan, terminal=True)


def test_a_long_plan_is_cut_to_a_page() -> None:
    tickets = [t("T0000")] + [t(f"T{i:04d}", f"T{i - 1:04d}") for i in range(1, 200)]
    tickets += [t(f"W{i:04d}") for i in range(50)]
    text = rendered(plan_of(tickets))
    batch_lines = [line for line in text.splitlines() if line.startswith("Batch ")]
    assert len(batch_lines) == MAX_BATCHES
    assert "more batches" in text
    assert "(41 more)" in text  # 51 tickets in the first batch, 10 shown
    assert "Batch 200" in text
    assert len(text.splitlines()) < 70


def test_an_empty_plan_says_there_is_nothing_to_run() -> None:
    text = rendered(plan_of([t("A", state="COMPLETED")]))
    assert "Nothing to run." in text


def test_the_plan_shows_both_schedules_and_where_paths_serialize_work() -> None:
    plan = plan_of(
        [
            t("A", estimate=10, paths=["src/**"]),
            t("B", estimate=10, paths=["src/app.py"]),
            t("C", "A", estimate=5),
        ],
        schedules=True,
    )
    text = rendered(plan)
    assert "A (batch 1) & B (batch 2)" in text
    assert "1 pair of tickets whose paths overlap never run at once" in text
    assert "levels 25s" in text and "eager 20s" in text and "bound 15s" in text
