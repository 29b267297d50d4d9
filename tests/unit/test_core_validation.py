"""Validation of the ticket index: every problem at once, each naming its tickets."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest

from sage_tasks.core.index import IndexDocument
from sage_tasks.core.plan import build_plan
from sage_tasks.errors import IndexValidationError, Problem


def t(tid: str, *deps: str, **fields: Any) -> dict[str, Any]:
    """A ticket with a command, so only the problem under test shows."""
    return {"id": tid, "dependencies": list(deps), "run": "true", **fields}


def problems_of(index: Any, *, has_executor: bool = False) -> list[Problem]:
    """Every problem loading and planning ``index`` reports (empty when valid)."""
    data = index if isinstance(index, str) else json.dumps(index)
    try:
        build_plan(IndexDocument.loads(data), has_executor=has_executor)
    except IndexValidationError as exc:
        return list(exc.problems)
    return []


def the_problem(index: Any, **kwargs: Any) -> Problem:
    found = problems_of(index, **kwargs)
    assert len(found) == 1, [p.message for p in found]
    return found[0]


# (index, expected message fragment, ticket ids the problem names)
ONE_PROBLEM = [
    pytest.param('{"tickets": [', "malformed JSON at line 1, column 14", (), id="truncated"),
    pytest.param('{"tickets": []}\n}', "malformed JSON at line 2, column 1", (), id="trailing"),
    pytest.param('{"tickets": [NaN]}', "NaN", (), id="nan"),
    pytest.param([], "top level is not a JSON object", (), id="top-list"),
    pytest.param({"version": "1.0"}, "no 'tickets' list", (), id="no-tickets"),
    pytest.param({"tickets": {"A": {}}}, "no 'tickets' list", (), id="tickets-object"),
    pytest.param({"tickets": [t("A"), "B"]}, "tickets[1]: is not an object but str", (), id="str"),
    pytest.param({"tickets": [{"title": "x"}]}, "tickets[0]: no 'id'", (), id="no-id"),
    pytest.param({"tickets": [{"id": 7}]}, "tickets[0]: 'id' must be a string", (), id="int-id"),
    pytest.param({"tickets": [t("bad id")]}, "tickets[0]: invalid id 'bad id'", (), id="space"),
    pytest.param({"tickets": [t("-A")]}, "invalid id '-A'", (), id="leading-dash"),
    pytest.param({"tickets": [t("A" * 65)]}, "invalid id", (), id="too-long"),
    pytest.param({"tickets": [t("A\n")]}, "invalid id", (), id="trailing-newline"),
    pytest.param({"tickets": [t("É")]}, "invalid id", (), id="non-ascii"),
    pytest.param(
        {"tickets": [t("A"), t("B"), t("A")]},
        "ticket A: duplicate id (tickets[0] and tickets[2])",
        ("A",),
        id="duplicate",
    ),
    pytest.param(
        {"tickets": [t("A", state="DONE")]}, "ticket A: bad state 'DONE'", ("A",), id="state"
    ),
    pytest.param({"tickets": [t("A", state=None)]}, "bad state None", ("A",), id="state-null"),
    pytest.param(
        {"tickets": [t("A", priority="P4")]}, "ticket A: bad priority 'P4'", ("A",), id="prio"
    ),
    pytest.param({"tickets": [t("A", priority=0)]}, "bad priority 0", ("A",), id="prio-int"),
    pytest.param(
        {"tickets": [{"id": "A", "dependencies": "B", "run": "x"}]},
        "ticket A: 'dependencies' must be a list of ticket ids",
        ("A",),
        id="deps-str",
    ),
    pytest.param(
        {"tickets": [t("B"), {"id": "A", "dependencies": ["B", 3], "run": "x"}]},
        "'dependencies' must be a list of ticket ids",
        ("A",),
        id="deps-int-item",
    ),
    pytest.param({"tickets": [t("A", run=["make"])]}, "'run' must be a shell command", ("A",)),
    pytest.param({"tickets": [t("A", title=3)]}, "'title' must be a string", ("A",), id="title"),
    pytest.param({"tickets": [t("A", timeout="10")]}, "'timeout' must be a positive", ("A",)),
    pytest.param({"tickets": [t("A", timeout=0)]}, "'timeout' must be a positive", ("A",)),
    pytest.param({"tickets": [t("A", timeout=True)]}, "'timeout' must be a positive", ("A",)),
    pytest.param({"tickets": [t("A", retries=-1)]}, "'retries' must be a whole number", ("A",)),
    pytest.param({"tickets": [t("A", retries=1.5)]}, "'retries' must be a whole number", ("A",)),
    pytest.param(
        {"tickets": [t("AUTH-002", "AUTH-999")]},
        "ticket AUTH-002: unknown dependency 'AUTH-999'",
        ("AUTH-002",),
        id="unknown-dep",
    ),
    pytest.param({"tickets": [t("A", "A")]}, "ticket A: depends on itself", ("A",), id="self"),
    pytest.param(
        {"tickets": [t("A", estimate="3 fortnights")]},
        "ticket A: cannot read estimate '3 fortnights'",
        ("A",),
        id="estimate",
    ),
    pytest.param(
        {"tickets": [t("A", estimate=-5)]}, "cannot read estimate -5", ("A",), id="estimate-neg"
    ),
    pytest.param(
        {"tickets": [{"id": "A"}]},
        "ticket A: no 'run' command and no executor",
        ("A",),
        id="no-command",
    ),
    pytest.param(
        {"tickets": [{"id": "A", "run": "   "}]}, "no 'run' command", ("A",), id="blank-command"
    ),
    pytest.param(
        {"tickets": [t("A", "B"), t("B", "A")]}, "cycle: A -> B -> A", ("A", "B"), id="2-cycle"
    ),
    pytest.param(
        {"tickets": [t("C", "A"), t("B", "C"), t("A", "B")]},
        "cycle: A -> B -> C -> A",
        ("A", "B", "C"),
        id="3-cycle",
    ),
]


@pytest.mark.parametrize(("index", "fragment", "tickets"), ONE_PROBLEM)
def test_each_kind_of_invalid_index_is_reported_with_the_tickets_it_is_about(
    index: Any, fragment: str, tickets: tuple[str, ...]
) -> None:
    problem = the_problem(index)
    assert fragment in problem.message
    assert problem.tickets == tickets
    assert "\n" not in problem.message


def test_a_valid_index_has_no_problems() -> None:
    index = {"version": "1", "tickets": [t("A"), t("B", "A", estimate="1h", timeout=60)]}
    assert problems_of(index) == []


def test_an_empty_ticket_list_is_valid() -> None:
    assert problems_of({"tickets": []}) == []


def test_every_problem_is_reported_at_once() -> None:
    index = {
        "tickets": [
            t("A", "B"),
            t("B", "A"),
            t("C", "NOPE"),
            t("D", state="DONE"),
            5,
            t("bad id"),
            t("A"),
            {"id": "E"},
        ]
    }
    messages = [p.message for p in problems_of(index)]
    expected = [
        "bad state 'DONE'",
        "tickets[4]: is not an object",
        "invalid id 'bad id'",
        "duplicate id",
        "unknown dependency 'NOPE'",
        "cycle: A -> B -> A",
    ]
    for fragment in expected:
        assert any(fragment in m for m in messages), (fragment, messages)


def test_a_missing_command_is_reported_together_with_a_cycle() -> None:
    index = {"tickets": [t("A", "B"), t("B", "A"), {"id": "C"}]}
    messages = [p.message for p in problems_of(index)]
    assert messages == [
        "cycle: A -> B -> A",
        "ticket C: no 'run' command and no executor (--executor or SAGE_EXECUTOR)",
    ]


def test_an_executor_stands_in_for_a_missing_command() -> None:
    assert problems_of({"tickets": [{"id": "A"}]}, has_executor=True) == []


def test_tickets_that_do_not_run_need_no_command() -> None:
    index = {"tickets": [{"id": "A", "state": "COMPLETED"}, {"id": "B", "state": "DEFERRED"}]}
    assert problems_of(index) == []


def test_a_cycle_is_reported_as_a_path_naming_every_ticket() -> None:
    ids = [f"T{i}" for i in range(7)]
    tickets = [t(tid, ids[(i + 1) % len(ids)]) for i, tid in enumerate(ids)]
    problem = the_problem({"tickets": tickets})
    assert problem.message == "cycle: " + " -> ".join([*ids, "T0"])
    assert set(problem.tickets) == set(ids)


def test_two_disjoint_cycles_are_both_reported() -> None:
    index = {"tickets": [t("A", "B"), t("B", "A"), t("X", "Y"), t("Y", "Z"), t("Z", "X"), t("F")]}
    messages = sorted(p.message for p in problems_of(index))
    assert messages == ["cycle: A -> B -> A", "cycle: X -> Y -> Z -> X"]


def test_every_ticket_of_a_small_tangle_is_named_on_some_cycle() -> None:
    # a hub on three two-cycles, and a longer way round: one component, no single cycle
    index = {
        "tickets": [
            t("HUB", "A", "B", "C"),
            t("A", "HUB"),
            t("B", "HUB"),
            t("C", "D"),
            t("D", "HUB"),
        ]
    }
    found = problems_of(index)
    assert all(p.message.startswith("cycle: ") for p in found)
    named = {tid for p in found for tid in p.tickets}
    assert named == {"HUB", "A", "B", "C", "D"}
    for p in found:  # each is a real closed path along dependencies
        path = p.message.removeprefix("cycle: ").split(" -> ")
        assert path[0] == path[-1]
        deps = {x["id"]: x["dependencies"] for x in index["tickets"]}
        assert all(b in deps[a] for a, b in pairwise(path))


def test_a_huge_tangle_is_summarised_after_a_few_cycles() -> None:
    n = 200
    tickets = [t(f"N{i:03d}", f"N{(i + 1) % n:03d}", f"N{(i + 7) % n:03d}") for i in range(n)]
    found = problems_of({"tickets": tickets})
    assert 2 <= len(found) <= 12
    assert "more tickets on cycles with" in found[-1].message
    named = {tid for p in found for tid in p.tickets}
    assert len(named) == n


def test_tickets_merely_downstream_of_a_cycle_are_not_called_cyclic() -> None:
    index = {"tickets": [t("A", "B"), t("B", "A"), t("C", "A"), t("D", "C")]}
    problem = the_problem(index)
    assert problem.message == "cycle: A -> B -> A"


def test_a_self_dependency_is_reported_once_by_both_checking_paths() -> None:
    fast = problems_of({"tickets": [t("A", "A"), t("B")]})
    slow = problems_of({"tickets": [t("A", "A"), t("B", timeout="x")]})
    assert [p.message for p in fast] == ["ticket A: depends on itself"]
    assert "ticket A: depends on itself" in [p.message for p in slow]


def test_a_dependency_listed_twice_is_harmless_and_named_once() -> None:
    plan = build_plan(IndexDocument.loads(json.dumps({"tickets": [t("A"), t("B", "A", "A")]})))
    assert plan.deps["B"] == ["A"]
    assert plan.batches == [["A"], ["B"]]


def test_the_error_lines_carry_the_index_path() -> None:
    with pytest.raises(IndexValidationError) as caught:
        IndexDocument.loads("[]", source="x/index.json")
    assert caught.value.lines() == ["x/index.json: top level is not a JSON object"]
    assert caught.value.exit_code == 2
