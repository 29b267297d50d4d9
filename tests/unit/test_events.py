"""The ticket event line and the arguments Flower shows of a commit task."""

from __future__ import annotations

from sage_tasks.app.monitoring import ARGSREPR_MAX, commit_argsrepr
from sage_tasks.store import events


def test_an_event_is_one_line_of_key_value_pairs_in_a_fixed_order() -> None:
    events.set_node("tickets@w1")
    try:
        line = events.format_event("r1", "T-1", "RAN", duration_s=1.23456, slot="tickets@w1#2")
        assert line == (
            "sage.ticket run=r1 ticket=T-1 host=tickets@w1 state=RAN duration_s=1.235 "
            "slot=tickets@w1#2"
        )
        assert events.slot() == "tickets@w1#0"  # not a pool process
    finally:
        events.set_node("")


def test_values_with_spaces_quotes_or_newlines_are_quoted_and_stay_on_one_line() -> None:
    line = events.format_event(
        "r1", "T-1", "DEFERRED", host="h", reason='exit code 1; said "no"\nsecond line', commit=""
    )
    assert line.endswith(r'state=DEFERRED reason="exit code 1; said \"no\""')
    assert "\n" not in line and "commit=" not in line
    long = events.format_event("r1", "T-1", "BLOCKED", host="h", reason="x" * 1000)
    assert len(long) < 300


def test_a_commit_tasks_arguments_keep_the_run_and_ticket_id_whatever_the_outcome_holds() -> None:
    outcome = {"ticket": "T-1", "outcome": "failed", "output": "y" * 50_000, "reason": "exit 1"}
    shown = commit_argsrepr([outcome, "r1", "T-1"])
    assert shown is not None and len(shown) <= ARGSREPR_MAX
    assert shown.startswith("({'ticket': 'T-1', 'outcome': 'failed', 'output': 'yyy")
    assert shown.endswith("(50000 chars)', 'reason': 'exit 1'}, 'r1', 'T-1')")
    huge = {f"k{i}": "v" * 100 for i in range(100)}
    shown = commit_argsrepr((huge, "r1", "T-1"))
    assert shown is not None and len(shown) <= ARGSREPR_MAX and shown.endswith(", 'r1', 'T-1')")
    assert commit_argsrepr(("r1", "T-1")) is None
