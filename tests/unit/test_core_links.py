"""Sage schema 2.2.0 indexes: ``blocks``/``blockedBy`` order the run, informational links
warn, a DEFERRED parent holds its children back, null lists are empty, and every upstream
field survives a rewrite. The indexes follow the shapes of upstream Sage-Dev's own test
fixtures (``tests/stream``, ``tests/ready-work``): stories with ``type``, a top-level
``workflow_mode``, IN_PROGRESS and DEFERRED mixes, null lists, one-sided links."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sage_tasks.core.index import IndexDocument, State, Ticket
from sage_tasks.core.links import own_waits, warning_lines
from sage_tasks.core.plan import Plan, build_plan
from sage_tasks.errors import IndexValidationError, Problem
from sage_tasks.work.prompt import render_prompt
from tests.support.builders import story, upstream_index

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sage-2.2" / "index.json"


def plan_of(data: dict[str, Any], **kwargs: Any) -> Plan:
    return build_plan(IndexDocument.loads(json.dumps(data)), has_executor=True, **kwargs)


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(IndexValidationError) as caught:
        plan_of(data)
    return [p.message for p in caught.value.problems]


# -- execution edges ---------------------------------------------------------------------


def test_the_reported_index_runs_auth_002_after_the_ticket_it_is_blocked_by() -> None:
    plan = plan_of(
        upstream_index(
            story("AUTH-001", title="JWT", blocks=["AUTH-002"], blockedBy=[]),
            story("AUTH-002", title="Refresh", blockedBy=["AUTH-001"]),
            {"id": "DB-001", "state": "UNPROCESSED", "title": "Database", "dependencies": None},
        )
    )
    assert plan.batches == [["AUTH-001", "DB-001"], ["AUTH-002"]]
    assert plan.deps == {"AUTH-001": [], "AUTH-002": ["AUTH-001"], "DB-001": []}
    assert plan.critical_path == ["AUTH-001", "AUTH-002"]


# the same chain A -> B -> C (C waits for B, B for A), written each way upstream allows
ONE_CHAIN = [
    pytest.param(
        [story("A", blocks=["B"]), story("B", blocks=["C"]), story("C")], id="blocks-only"
    ),
    pytest.param(
        [story("A"), story("B", blockedBy=["A"]), story("C", blockedBy=["B"])],
        id="blockedBy-only",
    ),
    pytest.param(
        [story("A", blocks=["B"]), story("B"), story("C", blockedBy=["B"])],
        id="blocks-one-side-blockedBy-the-other",
    ),
    pytest.param(
        [story("A", blocks=["B"]), story("B", blockedBy=["A"], blocks=["C"]), story("C")],
        id="reciprocal-and-one-sided",
    ),
    pytest.param(
        [story("A", blocks=None), story("B", dependencies=["A"]), story("C", blockedBy=["B"])],
        id="dependencies-and-blockedBy",
    ),
    pytest.param(
        [story("C", dependencies=["B"], blockedBy=["B"]), story("B", blockedBy=["A"]), story("A")],
        id="named-twice-by-one-ticket",
    ),
]


@pytest.mark.parametrize("tickets", ONE_CHAIN)
def test_every_way_of_writing_an_edge_orders_the_same_chain(tickets: list[dict[str, Any]]) -> None:
    plan = plan_of(upstream_index(*tickets))
    assert plan.batches == [["A"], ["B"], ["C"]]
    assert plan.critical_path == ["A", "B", "C"]
    assert plan.deps == {"A": [], "B": ["A"], "C": ["B"]}


def test_an_edge_named_on_both_sides_counts_once() -> None:
    data = upstream_index(story("A", blocks=["B"]), story("B", blockedBy=["A"], dependencies=["A"]))
    doc = IndexDocument.loads(json.dumps(data))
    plan = build_plan(doc, has_executor=True)
    assert plan.deps["B"] == ["A"]
    assert doc.waits_for("B") == ["A"]
    summary = doc.link_summary()
    assert summary.edges == {"dependencies": 1, "blockedBy": 1, "blocks": 1, "total": 1}
    assert summary.describe() == (
        "schema 2.2.0; 1 execution edge (dependencies 1, blockedBy 1, blocks 1, 2 named twice)"
    )


def test_a_completed_blocker_satisfies_the_ticket_it_blocks() -> None:
    plan = plan_of(
        upstream_index(story("DEPS-001", "COMPLETED", blocks=["READY-001"]), story("READY-001"))
    )
    assert plan.batches == [["READY-001"]]
    assert plan.completed == ["DEPS-001"]


def test_the_upstream_mixed_states_fixture_runs_what_is_unprocessed_or_in_progress() -> None:
    # tests/stream's create_mixed_state_fixtures, with the AUTH chain written as blocks
    plan = plan_of(
        upstream_index(
            story("AUTH-001", "COMPLETED", blocks=["AUTH-002"]),
            story("AUTH-002"),
            story("AUTH-003", "DEFERRED", blockedBy=["AUTH-002"]),
            story("API-001", blockedBy=["AUTH-002"]),
            story("API-002", "IN_PROGRESS", blocks=["API-001"]),
        )
    )
    assert plan.batches == [["API-002", "AUTH-002"], ["API-001"]]
    assert plan.completed == ["AUTH-001"] and plan.deferred == ["AUTH-003"]
    assert plan.blocked == []


@pytest.mark.parametrize("retry", [False, True])
def test_a_ticket_blocked_by_a_deferred_ticket_is_blocked_unless_it_is_retried(
    retry: bool,
) -> None:
    plan = plan_of(
        upstream_index(
            story("WIP-001", "DEFERRED", blocks=["WAIT-001"]),
            story("WAIT-001"),
            story("NEXT-001", blockedBy=["WAIT-001"]),
        ),
        retry_deferred=retry,
    )
    if retry:
        assert plan.batches == [["WIP-001"], ["WAIT-001"], ["NEXT-001"]]
        assert plan.blocked == [] and plan.blocked_reasons == {}
    else:
        assert plan.batches == [] and plan.blocked == ["WAIT-001", "NEXT-001"]
        assert plan.blocked_reasons == {
            "WAIT-001": "dependency WIP-001 is DEFERRED and not retried",
            "NEXT-001": "dependency WAIT-001 is BLOCKED",
        }


# -- null and missing lists ----------------------------------------------------------------


@pytest.mark.parametrize("empty", [None, [], "missing"])
def test_a_null_or_missing_list_is_an_empty_one(empty: Any) -> None:
    fields = ("dependencies", "blocks", "blockedBy", "relatedTo", "discoveredFrom", "parent")
    lists = {} if empty == "missing" else dict.fromkeys(fields, empty)
    if isinstance(empty, list):
        lists["discoveredFrom"] = lists["parent"] = None  # single ids upstream: null when none
    doc = IndexDocument.loads(json.dumps(upstream_index(story("A", **lists), story("B", **lists))))
    assert build_plan(doc, has_executor=True).batches == [["A", "B"]]
    assert doc.warnings == []
    ticket = doc.get("A")
    assert ticket is not None
    assert ticket.dependencies == ticket.blocked_by == ticket.blocks == []


def test_the_typed_view_reads_blocked_by_under_its_upstream_name() -> None:
    ticket = Ticket.model_validate(story("B", blockedBy=["A"], blocks=None, dependencies=None))
    assert ticket.blocked_by == ["A"] and ticket.blocks == [] and ticket.dependencies == []
    assert "blockedBy" not in (ticket.model_extra or {})


# -- validation ----------------------------------------------------------------------------

# (tickets, the one problem expected) -- each names its ticket and its field
BAD_LINKS = [
    pytest.param(
        [story("A", blocks="B"), story("B")],
        "ticket A: 'blocks' must be a list of ticket ids, got 'B'",
        id="blocks-string",
    ),
    pytest.param(
        [story("A", blockedBy={"id": "B"}), story("B")],
        "ticket A: 'blockedBy' must be a list of ticket ids, got {'id': 'B'}",
        id="blockedBy-object",
    ),
    pytest.param(
        [story("A", blockedBy=["B", 7]), story("B")],
        "ticket A: 'blockedBy' must be a list of ticket ids, got ['B', 7]",
        id="blockedBy-int-entry",
    ),
    pytest.param(
        [story("A", blocks=[None]), story("B")],
        "ticket A: 'blocks' must be a list of ticket ids, got [None]",
        id="blocks-null-entry",
    ),
    pytest.param(
        [story("A", blocks=["AUTH-999"])],
        "ticket A: 'blocks' names unknown ticket 'AUTH-999'",
        id="blocks-unknown",
    ),
    pytest.param(
        [story("A", blockedBy=["AUTH-999"])],
        "ticket A: 'blockedBy' names unknown ticket 'AUTH-999'",
        id="blockedBy-unknown",
    ),
    pytest.param([story("A", blocks=["A"])], "ticket A: 'blocks' names itself", id="blocks-self"),
    pytest.param(
        [story("A", blockedBy=["A"])], "ticket A: 'blockedBy' names itself", id="blockedBy-self"
    ),
    pytest.param(
        [story("A", dependencies=0)],
        "ticket A: 'dependencies' must be a list of ticket ids, got 0",
        id="dependencies-zero",
    ),
]


@pytest.mark.parametrize(("tickets", "message"), BAD_LINKS)
def test_a_bad_link_names_its_ticket_and_its_field(
    tickets: list[dict[str, Any]], message: str
) -> None:
    assert problems_of(upstream_index(*tickets)) == [message]


def test_every_bad_link_is_reported_at_once() -> None:
    found = problems_of(
        upstream_index(
            story("A", blocks=["X-1", "B"], blockedBy=["A"]),
            story("B", blockedBy="A", dependencies=["Y-2"]),
            story("C", blocks=[3]),
            story("D", blockedBy=["E"]),
            story("E", blocks=["D"], blockedBy=["D"]),
        )
    )
    assert found == [
        "ticket B: 'blockedBy' must be a list of ticket ids, got 'A'",
        "ticket C: 'blocks' must be a list of ticket ids, got [3]",
        "ticket A: 'blockedBy' names itself",
        "ticket A: 'blocks' names unknown ticket 'X-1'",
        "ticket B: unknown dependency 'Y-2'",
        "cycle: D -> E -> D (D -> E: 'blockedBy' of D; E -> D: 'blockedBy' of E)",
    ]


def test_a_cycle_through_mixed_edge_kinds_is_printed_with_the_field_of_each_step() -> None:
    # A waits for B (its dependencies), B for C (C blocks B), C for A (C's blockedBy)
    found = problems_of(
        upstream_index(
            story("A", dependencies=["B"]), story("B"), story("C", blocks=["B"], blockedBy=["A"])
        )
    )
    assert found == ["cycle: A -> B -> C -> A (B -> C: 'blocks' of C; C -> A: 'blockedBy' of C)"]


def test_a_cycle_of_dependencies_only_is_printed_as_before() -> None:
    found = problems_of(
        upstream_index(
            story("A", dependencies=["B"], blocks=["C"]), story("B", dependencies=["A"]), story("C")
        )
    )
    assert found == ["cycle: A -> B -> A"]


# -- informational links -----------------------------------------------------------------


def test_unknown_ids_in_informational_links_are_warnings_and_the_run_proceeds() -> None:
    doc = IndexDocument.loads(
        json.dumps(
            upstream_index(
                story("UI-005", relatedTo=["AUTH-003", "UI-006"], parent="EPIC-9"),
                story("BUG-015", discoveredFrom="STREAM-006"),
                story("UI-006", relatedTo=["UI-005"], discoveredFrom=["UI-005"]),
            )
        )
    )
    plan = build_plan(doc, has_executor=True)
    assert plan.batches == [["BUG-015", "UI-005", "UI-006"]]
    assert [w.message for w in doc.warnings] == [
        "ticket UI-005: 'relatedTo' names unknown ticket 'AUTH-003'",
        "ticket BUG-015: 'discoveredFrom' names unknown ticket 'STREAM-006'",
        "ticket UI-005: 'parent' names unknown ticket 'EPIC-9'",
    ]
    assert all(w.tickets for w in doc.warnings)


def test_informational_links_of_an_odd_shape_are_warnings_too() -> None:
    doc = IndexDocument.loads(
        json.dumps(
            upstream_index(
                story("A", relatedTo="B", parent=["B"]),
                story("B", discoveredFrom=5, relatedTo=[1], parent="B"),
            )
        )
    )
    assert build_plan(doc, has_executor=True).batches == [["A", "B"]]
    assert [w.message for w in doc.warnings] == [
        "ticket A: 'relatedTo' should be a list of ticket ids, got 'B'; ignored",
        "ticket B: 'relatedTo' holds 1, not a ticket id; ignored",
        "ticket B: 'discoveredFrom' should be a ticket id, got 5; ignored",
        "ticket A: 'parent' should be a ticket id, got ['B']; ignored",
        "ticket B: 'parent' names itself; ignored",
    ]


def test_informational_links_order_nothing() -> None:
    plan = plan_of(
        upstream_index(
            story("A", relatedTo=["B"], discoveredFrom="B", parent="B"),
            story("B", relatedTo=["A"]),
        )
    )
    assert plan.batches == [["A", "B"]] and plan.deps == {"A": [], "B": []}


def test_a_long_list_of_warnings_is_cut_with_a_count() -> None:
    warnings = [Problem(f"ticket T-{n}: 'relatedTo' names unknown ticket 'X'") for n in range(25)]
    lines = warning_lines(warnings)
    assert len(lines) == 21 and lines[-1] == "... and 5 more"
    assert lines[0] == warnings[0].message


# -- parent --------------------------------------------------------------------------------


def test_a_child_of_a_deferred_parent_is_blocked_with_that_reason() -> None:
    plan = plan_of(
        upstream_index(
            {"id": "STREAM-001", "type": "epic", "state": "DEFERRED"},
            story("STREAM-002", parent="STREAM-001"),
            story("STREAM-003", parent="STREAM-001", blocks=["STREAM-004"]),
            story("STREAM-004"),
            story("STREAM-005", parent="STREAM-002"),
            story("OTHER-001"),
        )
    )
    assert plan.batches == [["OTHER-001"]]
    assert plan.blocked == ["STREAM-002", "STREAM-003", "STREAM-004", "STREAM-005"]
    assert plan.blocked_reasons == {
        "STREAM-002": "parent STREAM-001 is DEFERRED and not retried",
        "STREAM-003": "parent STREAM-001 is DEFERRED and not retried",
        "STREAM-004": "dependency STREAM-003 is BLOCKED",
        "STREAM-005": "parent STREAM-002 is BLOCKED: its ancestor STREAM-001 is DEFERRED "
        "and not retried",
    }


def test_a_child_of_a_retried_parent_runs_and_the_parent_orders_nothing() -> None:
    plan = plan_of(
        upstream_index(
            {"id": "EPIC-1", "type": "epic", "state": "DEFERRED"},
            story("STORY-1", parent="EPIC-1"),
        ),
        retry_deferred=True,
    )
    assert plan.batches == [["EPIC-1", "STORY-1"]] and plan.blocked == []


@pytest.mark.parametrize("middle", ["COMPLETED", "DEFERRED-retried"])
def test_a_completed_parent_ends_the_hold_of_a_deferred_grandparent(middle: str) -> None:
    state = "COMPLETED" if middle == "COMPLETED" else "UNPROCESSED"
    plan = plan_of(
        upstream_index(
            {"id": "EPIC-1", "state": "DEFERRED"},
            story("STORY-1", state, parent="EPIC-1"),
            story("TASK-1", parent="STORY-1"),
        )
    )
    if middle == "COMPLETED":
        assert plan.batches == [["TASK-1"]] and plan.blocked == []
    else:
        assert plan.blocked == ["STORY-1", "TASK-1"]


def test_parents_that_name_each_other_hold_nothing() -> None:
    plan = plan_of(upstream_index(story("A", parent="B"), story("B", parent="A")))
    assert plan.batches == [["A", "B"]] and plan.blocked == []


# -- nothing rewritten that was not changed -------------------------------------------------


def test_every_upstream_field_survives_a_state_change_exactly() -> None:
    original = EXAMPLE.read_bytes()
    doc = IndexDocument.loads(original)
    assert doc.dumps() == original  # the example is written the way sage-tasks writes
    doc.set_state("AUTH-001", State.COMPLETED)
    doc.set_state("API-001", State.DEFERRED, "exit code 1")
    after = json.loads(doc.dumps())
    before = json.loads(original)
    assert list(after) == list(before)
    assert {k: v for k, v in after.items() if k != "tickets"} == {
        k: v for k, v in before.items() if k != "tickets"
    }
    for old, new in zip(before["tickets"], after["tickets"], strict=True):
        changed = {k for k in new if new.get(k) != old.get(k)} | (set(old) - set(new))
        assert changed <= {"state", "deferred_reason"}, (old["id"], changed)
        assert [k for k in new if k in old] == list(old)  # key order kept
    assert after["tickets"][0]["blocks"] is None  # nulls stay null: nothing is "fixed"


def test_the_example_plans_as_its_readme_says() -> None:
    doc = IndexDocument.loads(EXAMPLE.read_bytes())
    plan = build_plan(doc)
    assert plan.batches == [
        ["AUTH-001"],
        ["API-001", "AUTH-002"],
        ["BUG-001", "API-002"],
        ["UI-001"],
    ]
    assert plan.critical_path == ["AUTH-001", "AUTH-002", "BUG-001", "UI-001"]
    assert plan.blocked == ["MOBILE-001"] and plan.deferred == ["MOBILE-000"]
    assert doc.link_summary().describe() == (
        "schema 2.2.0; 7 execution edges (dependencies 2, blockedBy 3, blocks 3, 1 named twice); "
        "informational links: relatedTo 3, discoveredFrom 1, parent 6"
    )
    assert [w.message for w in doc.warnings] == [
        "ticket UI-001: 'relatedTo' names unknown ticket 'DESIGN-042'"
    ]


def test_a_plan_with_its_link_summary_survives_its_json_round_trip() -> None:
    doc = IndexDocument.loads(EXAMPLE.read_bytes())
    plan = build_plan(doc)
    plan.links = doc.link_summary()
    data = json.loads(json.dumps(plan.to_json()))
    assert data["schema"]["version"] == "2.2.0" and data["schema"]["edges"]["total"] == 7
    assert data["blocked_reasons"] == {
        "MOBILE-001": "parent MOBILE-000 is DEFERRED and not retried"
    }
    assert Plan.from_json(data) == plan


# -- what a ticket's own fields say ---------------------------------------------------------


def test_a_ticket_alone_waits_for_its_dependencies_and_blocked_by() -> None:
    assert own_waits(story("C", dependencies=["A", "B"], blockedBy=["B", "D"])) == ["A", "B", "D"]
    assert own_waits(story("C", dependencies=None, blockedBy=None)) == []


def test_the_prompt_lists_blocked_by_with_the_dependencies() -> None:
    prompt = render_prompt(
        story("UI-001", dependencies=["DB-001"], blockedBy=["AUTH-002"], blocks=["DOCS-1"]),
        run_id="r1",
    )
    section = prompt.split("## Dependencies\n\n", 1)[1].split("\n## ", 1)[0]
    assert "- DB-001\n- AUTH-002" in section
    other = prompt.split("## Other ticket fields\n\n", 1)[1].split("\n## ", 1)[0]
    assert "blocks" in other and "blockedBy" not in other
