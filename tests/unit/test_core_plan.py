"""The plan: selection, levels, priority order, groups, blocking, critical path, statistics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sage_tasks.core.index import IndexDocument, State
from sage_tasks.core.plan import Plan, build_plan
from sage_tasks.core.stats import auto_workers, makespan, recommended_workers
from sage_tasks.errors import ConfigError


def t(tid: str, *deps: str, **fields: Any) -> dict[str, Any]:
    return {"id": tid, "dependencies": list(deps), "run": "true", **fields}


def plan_of(tickets: list[dict[str, Any]], **kwargs: Any) -> Plan:
    return build_plan(IndexDocument.loads(json.dumps({"tickets": tickets})), **kwargs)


# (tickets, expected levels)
LEVELS = [
    pytest.param([], [], id="empty"),
    pytest.param([t("A"), t("B"), t("C")], [["A", "B", "C"]], id="independent"),
    pytest.param([t("C", "B"), t("B", "A"), t("A")], [["A"], ["B"], ["C"]], id="chain"),
    pytest.param(
        [t("A"), t("B", "A"), t("C", "A"), t("D", "B", "C")],
        [["A"], ["B", "C"], ["D"]],
        id="diamond",
    ),
    pytest.param(
        [t("A"), t("B", "A"), t("C", "B"), t("D", "A", "C")],
        [["A"], ["B"], ["C"], ["D"]],
        id="deepest-dependency-wins",
    ),
    pytest.param(
        [t("A", state="COMPLETED"), t("B", "A"), t("C", "B")],
        [["B"], ["C"]],
        id="completed-dependency-is-satisfied",
    ),
    pytest.param([t("A", state="IN_PROGRESS"), t("B", "A")], [["A"], ["B"]], id="in-progress-runs"),
    pytest.param(
        [t("X", "A", state="COMPLETED"), t("A"), t("B", "X")],
        [["A", "B"]],
        id="completed-ticket-satisfies-whatever-its-own-dependencies",
    ),
]


@pytest.mark.parametrize(("tickets", "levels"), LEVELS)
def test_a_tickets_level_is_one_more_than_its_deepest_dependency_to_run(
    tickets: list[dict[str, Any]], levels: list[list[str]]
) -> None:
    plan = plan_of(tickets)
    assert plan.levels == levels
    assert plan.batches == levels
    assert plan.batch_levels == list(range(1, len(levels) + 1))


# (tickets, expected first level)
PRIORITY = [
    pytest.param(
        [t("B", priority="P2"), t("A", priority="P3"), t("C", priority="P0")],
        ["C", "B", "A"],
        id="p0-first",
    ),
    pytest.param([t("B"), t("A"), t("C", priority="P1")], ["C", "A", "B"], id="default-is-p2"),
    pytest.param(
        [t("T-10", priority="P1"), t("T-9", priority="P1"), t("T-1", priority="P1")],
        ["T-1", "T-10", "T-9"],
        id="then-id",
    ),
]


@pytest.mark.parametrize(("tickets", "first"), PRIORITY)
def test_each_level_is_sorted_by_priority_then_id(
    tickets: list[dict[str, Any]], first: list[str]
) -> None:
    assert plan_of(tickets).levels[0] == first


def test_the_design_example_plan() -> None:
    plan = plan_of([t("A"), t("B"), t("C", "A")])
    out = plan.to_json()
    assert {k: out[k] for k in ("batches", "critical_path", "blocked", "tickets", "to_run")} == {
        "batches": [["A", "B"], ["C"]],
        "critical_path": ["A", "C"],
        "blocked": [],
        "tickets": 3,
        "to_run": 3,
    }
    assert out["parallel"] is None


# (parallel, expected batches, expected batch levels) over six tickets in two levels
FIVE_AND_ONE = [t(x) for x in "ABCDE"] + [t("F", "A")]
PARALLEL = [
    pytest.param(None, [["A", "B", "C", "D", "E"], ["F"]], [1, 2], id="none"),
    pytest.param(1, [["A"], ["B"], ["C"], ["D"], ["E"], ["F"]], [1, 1, 1, 1, 1, 2], id="1"),
    pytest.param(2, [["A", "B"], ["C", "D"], ["E"], ["F"]], [1, 1, 1, 2], id="2"),
    pytest.param(5, [["A", "B", "C", "D", "E"], ["F"]], [1, 2], id="5"),
    pytest.param(50, [["A", "B", "C", "D", "E"], ["F"]], [1, 2], id="more-than-a-level"),
]


@pytest.mark.parametrize(("parallel", "batches", "batch_levels"), PARALLEL)
def test_parallel_splits_each_level_into_consecutive_groups_of_at_most_n(
    parallel: int | None, batches: list[list[str]], batch_levels: list[int]
) -> None:
    plan = plan_of(FIVE_AND_ONE, parallel=parallel)
    assert plan.batches == batches
    assert plan.batch_levels == batch_levels
    assert plan.parallel == parallel
    assert plan.levels == [["A", "B", "C", "D", "E"], ["F"]]


# (cores, tickets to run, N)
AUTO = [
    pytest.param(8, 20, 4, id="half-the-cores"),
    pytest.param(1, 20, 1, id="at-least-one"),
    pytest.param(3, 20, 1, id="rounds-down"),
    pytest.param(64, 20, 8, id="at-most-eight"),
    pytest.param(16, 3, 3, id="at-most-the-tickets"),
    pytest.param(16, 0, 1, id="nothing-to-run"),
]


@pytest.mark.parametrize(("cores", "to_run", "workers"), AUTO)
def test_parallel_auto_picks_n_as_the_seed_did(cores: int, to_run: int, workers: int) -> None:
    assert auto_workers(cores, to_run) == workers
    plan = plan_of([t(f"T{i}") for i in range(to_run)], parallel="auto", cores=cores)
    assert plan.parallel == workers


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4", "many"])
def test_a_bad_parallel_value_is_an_argument_error(bad: Any) -> None:
    with pytest.raises(ConfigError):
        plan_of([t("A")], parallel=bad)


# (tickets, retry_deferred, expected batches, blocked, deferred)
SELECTION = [
    pytest.param(
        [t("D", state="DEFERRED"), t("A", "D"), t("B", "A"), t("C")],
        False,
        [["C"]],
        ["A", "B"],
        ["D"],
        id="blocked-directly-and-through-others",
    ),
    pytest.param(
        [t("D", state="DEFERRED"), t("A", "D"), t("B", "A"), t("C")],
        True,
        [["C", "D"], ["A"], ["B"]],
        [],
        [],
        id="retry-deferred-runs-them",
    ),
    pytest.param(
        [t("D", state="DEFERRED"), t("X", "D", state="COMPLETED"), t("A", "X")],
        False,
        [["A"]],
        [],
        ["D"],
        id="blocking-never-passes-a-completed-ticket",
    ),
    pytest.param(
        [t("D", state="DEFERRED"), t("E", "D", state="DEFERRED"), t("A", "E")],
        False,
        [],
        ["A"],
        ["D", "E"],
        id="deferred-ticket-is-not-itself-blocked",
    ),
    pytest.param(
        [t("D", state="DEFERRED"), t("A", "D", "C"), t("C"), t("B", "C")],
        False,
        [["C"], ["B"]],
        ["A"],
        ["D"],
        id="one-deferred-dependency-is-enough",
    ),
    pytest.param(
        [t("A", state="COMPLETED"), t("B", state="COMPLETED")],
        False,
        [],
        [],
        [],
        id="all-completed",
    ),
]


@pytest.mark.parametrize(("tickets", "retry", "batches", "blocked", "deferred"), SELECTION)
def test_selection_runs_blocks_and_skips_as_the_design_says(
    tickets: list[dict[str, Any]],
    retry: bool,
    batches: list[list[str]],
    blocked: list[str],
    deferred: list[str],
) -> None:
    plan = plan_of(tickets, retry_deferred=retry)
    assert plan.batches == batches
    assert plan.blocked == blocked
    assert plan.deferred == deferred
    assert plan.tickets == len(tickets)
    assert plan.to_run == sum(map(len, batches))


def test_completed_tickets_are_listed_and_never_run() -> None:
    plan = plan_of([t("A", state="COMPLETED"), t("B", "A")])
    assert plan.completed == ["A"]
    assert plan.deps == {"B": []}


def test_deps_name_only_the_dependencies_that_run_too() -> None:
    plan = plan_of([t("A", state="COMPLETED"), t("B"), t("C", "A", "B")])
    assert plan.deps == {"B": [], "C": ["B"]}


def test_set_state_is_seen_by_the_next_plan() -> None:
    doc = IndexDocument.loads(json.dumps({"tickets": [t("A"), t("B", "A")]}))
    assert build_plan(doc).batches == [["A"], ["B"]]
    doc.set_state("A", State.COMPLETED)
    assert build_plan(doc).batches == [["B"]]
    doc.set_state("A", State.DEFERRED, "failed")
    assert build_plan(doc).blocked == ["B"]


# (tickets, critical path, seconds)
CRITICAL = [
    pytest.param([t("A"), t("B", "A"), t("C")], ["A", "B"], None, id="by-count"),
    pytest.param(
        [t("A", priority="P1"), t("B", priority="P0"), t("C", "A"), t("D", "B", priority="P1")],
        ["B", "D"],
        None,
        id="ties-go-to-priority",
    ),
    pytest.param(
        [t("Y", priority="P3"), t("X", priority="P0"), t("Z", "Y", "X")],
        ["X", "Z"],
        None,
        id="dependency-ties-go-to-priority-too",
    ),
    pytest.param(
        [
            t("A", estimate="1 hour"),
            t("B", "A", estimate="30 minutes"),
            t("C", estimate="2h"),
            t("D", "C", estimate="45m"),
        ],
        ["C", "D"],
        2 * 3600 + 45 * 60.0,
        id="by-estimate",
    ),
    pytest.param(
        [t("A", estimate="10m"), t("B", "A"), t("C", estimate="25m")],
        ["A", "B"],
        (10 + 17.5) * 60.0,
        id="unestimated-count-as-the-mean",
    ),
    pytest.param(
        [t("A", estimate=90), t("B", "A", estimate="1.5 hours"), t("C", "B", estimate="20 min")],
        ["A", "B", "C"],
        90 + 5400 + 1200.0,
        id="numbers-are-seconds",
    ),
    pytest.param(
        [t("A", estimate="1h", state="COMPLETED"), t("B", "A"), t("C")],
        ["B"],
        None,
        id="completed-estimates-do-not-count",
    ),
]


@pytest.mark.parametrize(("tickets", "path", "seconds"), CRITICAL)
def test_the_critical_path_is_the_heaviest_chain_of_tickets_to_run(
    tickets: list[dict[str, Any]], path: list[str], seconds: float | None
) -> None:
    plan = plan_of(tickets)
    assert plan.critical_path == path
    assert plan.critical_path_seconds == seconds


def test_blocked_tickets_do_not_weigh_on_the_critical_path() -> None:
    tickets = [
        t("D", state="DEFERRED"),
        t("X", "D", estimate="10h"),
        t("A", estimate="1h"),
        t("B", "A"),
    ]
    plan = plan_of(tickets)
    assert plan.blocked == ["X"]
    assert plan.critical_path == ["A", "B"]
    assert plan.critical_path_seconds == 7200.0


def test_the_seed_batch_statistics_ten_tickets_three_workers_make_four_batches() -> None:
    plan = plan_of([t(f"T{i:02d}") for i in range(10)], parallel=3)
    assert plan.stats.batches == 4
    assert plan.stats.widest_batch == 3
    assert plan.stats.independent_share == 1.0
    assert plan.stats.parallel_steps == 4
    assert plan.stats.sequential_steps == 10


def test_statistics_estimate_sequential_and_parallel_time() -> None:
    tickets = [t("A", estimate="1h"), t("B", estimate="1h"), t("C", "A", "B", estimate="30m")]
    stats = plan_of(tickets, parallel=2).stats
    assert (stats.sequential_seconds, stats.parallel_seconds) == (9000.0, 5400.0)
    assert stats.workers == 2
    assert stats.speedup == pytest.approx(9000 / 5400, abs=1e-3)
    assert stats.independent == 2
    assert stats.independent_share == pytest.approx(2 / 3, abs=1e-3)


def test_without_estimates_the_statistics_count_steps() -> None:
    stats = plan_of([t("A"), t("B"), t("C"), t("D", "A")]).stats
    assert stats.sequential_seconds is None and stats.parallel_seconds is None
    assert stats.recommended_workers == 3
    assert (stats.sequential_steps, stats.parallel_steps) == (4, 2)
    assert stats.speedup == 2.0


@pytest.mark.parametrize(
    ("widths", "workers"),
    [([], 1), ([1, 1, 1], 1), ([9, 8, 5, 4, 1, 2], 9), ([100] + [1] * 20, 34), ([4, 4], 4)],
)
def test_the_recommended_worker_count_is_within_ten_percent_of_the_fastest(
    widths: list[int], workers: int
) -> None:
    assert recommended_workers(widths) == workers


def test_makespan_gives_each_worker_the_next_ticket() -> None:
    assert makespan([3, 3, 2, 2, 2], 2) == 7
    assert makespan([5, 1], 4) == 5
    assert makespan([], 3) == 0


def test_a_plan_survives_its_json_round_trip() -> None:
    tickets = [
        t("A", estimate="1h"),
        t("B", "A", priority="P0"),
        t("C", "A"),
        t("D", state="DEFERRED"),
        t("E", "D"),
        t("F", state="COMPLETED"),
    ]
    plan = plan_of(tickets, parallel=1)
    data = json.loads(json.dumps(plan.to_json()))
    assert Plan.from_json(data) == plan
    assert {"batches", "critical_path", "blocked", "tickets", "to_run", "parallel"} <= set(data)
    assert {"levels", "stats", "critical_path_seconds", "completed"} <= set(data)
    assert data["blocked"] == ["E"] and data["completed"] == ["F"]
    assert data["stats"]["batches"] == 3


def test_from_json_derives_batch_levels_when_they_are_missing() -> None:
    plan = plan_of([t("A"), t("B"), t("C", "A")], parallel=1)
    data = plan.to_json()
    del data["batch_levels"]
    assert Plan.from_json(data).batch_levels == [1, 1, 2]


def test_the_plan_of_a_list_of_dependencies_does_not_share_it_with_the_index() -> None:
    doc = IndexDocument.loads(json.dumps({"tickets": [t("A"), t("B", "A")]}))
    plan = build_plan(doc)
    plan.deps["B"].append("X")
    assert doc.ticket_json("B")["dependencies"] == ["A"]
