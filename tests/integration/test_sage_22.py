"""Indexes written by upstream Sage-Dev today (schema 2.2.0) run end to end in the right
order: ``--dry-run`` and ``check`` show what was understood, bad links are refused before
anything is sent, a ``--local`` run and an eager run on a fleet commit every ticket after
everything it waits for, ``status`` and the report say why tickets were held back, and the
index on the branch keeps every upstream field."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.builders import story, upstream_index, writes
from tests.support.fleet import Fleet
from tests.support.gitrepo import git, make_repo
from tests.support.procs import bin_path
from tests.support.runs import index_at, ticket_log

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sage-2.2"
SAGE_SUBMIT = bin_path("sage-submit")
#: what the example's index names that sage-tasks never writes
UPSTREAM_FIELDS = (
    "type",
    "title",
    "priority",
    "dependencies",
    "blocks",
    "blockedBy",
    "relatedTo",
    "discoveredFrom",
    "parent",
    "estimate",
    "acceptance_criteria",
    "run",
)


def submit(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGE_SUBMIT, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def example_repo(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_repo.py"), str(EXAMPLE), str(dest)],
        check=True,
        capture_output=True,
    )
    return dest


def waits_for(tickets: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Each ticket's execution edges, worked out here from the raw fields (the oracle)."""
    out = {
        t["id"]: set(t.get("dependencies") or []) | set(t.get("blockedBy") or []) for t in tickets
    }
    for t in tickets:
        for other in t.get("blocks") or []:
            out[other].add(t["id"])
    return out


def assert_commits_honour_every_edge(order: list[str], tickets: list[dict[str, Any]]) -> None:
    state = {t["id"]: t.get("state", "UNPROCESSED") for t in tickets}
    for tid, needs in waits_for(tickets).items():
        if tid not in order:
            continue
        for need in needs:
            assert state[need] == "COMPLETED" or need in order, (tid, need)
            if need in order:
                assert order.index(need) < order.index(tid), f"{tid} committed before {need}"


# -- seen before anything runs ---------------------------------------------------------------


def test_dry_run_shows_the_schema_the_edges_per_field_and_why_a_ticket_is_blocked(
    tmp_path: Path,
) -> None:
    repo = example_repo(tmp_path / "repo")
    proc = submit("--repo", str(repo), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["batches"] == [
        ["AUTH-001"],
        ["API-001", "AUTH-002"],
        ["BUG-001", "API-002"],
        ["UI-001"],
    ]
    assert plan["schema"]["version"] == "2.2.0"
    assert plan["schema"]["edges"] == {"dependencies": 2, "blockedBy": 3, "blocks": 3, "total": 7}
    assert plan["blocked"] == ["MOBILE-001"]
    assert plan["blocked_reasons"] == {
        "MOBILE-001": "parent MOBILE-000 is DEFERRED and not retried"
    }
    assert proc.stderr.splitlines() == [
        "sage: warning: .sage/tickets/index.json: ticket UI-001: 'relatedTo' names unknown "
        "ticket 'DESIGN-042'"
    ]

    person = submit("--repo", str(repo), "--dry-run")
    assert person.returncode == 0, person.stderr
    text = re.sub(r"\s+", " ", person.stdout)
    assert (
        "Index schema 2.2.0; 7 execution edges (dependencies 2, blockedBy 3, blocks 3, "
        "1 named twice)" in text
    )
    assert "Blocked 1: MOBILE-001 (parent MOBILE-000 is DEFERRED and not retried)" in text
    assert (
        "Critical path (4 tickets, about 2h 10m) AUTH-001 -> AUTH-002 -> BUG-001 -> UI-001" in text
    )
    assert "DESIGN-042" in person.stderr and "DESIGN-042" not in person.stdout


def test_check_reports_the_schema_the_edges_and_the_warnings(tmp_path: Path) -> None:
    repo = example_repo(tmp_path / "repo")
    # no broker on this port: the check still reads the index
    proc = submit("check", "--repo", str(repo), "--broker", "redis://127.0.0.1:9/0", "--json")
    findings = json.loads(proc.stdout)["checks"]
    links = [f["detail"] for f in findings if f["what"] == "ticket links"]
    assert links == [
        "schema 2.2.0; 7 execution edges (dependencies 2, blockedBy 3, blocks 3, 1 named twice); "
        "informational links: relatedTo 3, discoveredFrom 1, parent 6",
        "warning: ticket UI-001: 'relatedTo' names unknown ticket 'DESIGN-042'",
    ]
    assert all(f["info"] for f in findings if f["what"] == "ticket links")


def test_bad_links_are_refused_naming_ticket_and_field_and_nothing_is_sent(
    tmp_path: Path,
) -> None:
    index = {
        "version": "2.2.0",
        "workflow_mode": "TICKET_BASED",
        "tickets": [
            {"id": "AUTH-001", "type": "story", "run": "true", "blocks": ["AUTH-404"]},
            {"id": "AUTH-002", "type": "story", "run": "true", "blockedBy": "AUTH-001"},
            {"id": "API-001", "type": "story", "run": "true", "blockedBy": ["API-002"]},
            {"id": "API-002", "type": "story", "run": "true", "blocks": ["API-001"],
             "dependencies": ["API-001"]},
        ],
    }  # fmt: skip
    repo = make_repo(tmp_path / "repo", {}, index)
    # a broker that does not exist: validation must fail before anything talks to it
    proc = submit("--repo", str(repo), "--broker", "redis://127.0.0.1:9/0", "--branch", "sage/x")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "sage: error: .sage/tickets/index.json: ticket AUTH-002: 'blockedBy' must be a list of "
        "ticket ids, got 'AUTH-001'",
        "sage: error: .sage/tickets/index.json: ticket AUTH-001: 'blocks' names unknown ticket "
        "'AUTH-404'",
        "sage: error: .sage/tickets/index.json: cycle: API-001 -> API-002 -> API-001 "
        "(API-001 -> API-002: 'blockedBy' of API-001)",
    ]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert git(repo, "branch", "--list", "sage/x").strip() == ""


# -- a whole run with --local ------------------------------------------------------------------


def test_a_local_run_commits_every_ticket_after_all_it_waits_for_and_keeps_every_field(
    tmp_path: Path,
) -> None:
    repo = example_repo(tmp_path / "repo")
    original = json.loads((EXAMPLE / "index.json").read_text())
    proc = submit("--repo", str(repo), "--local", "--json", "--branch", "sage/demo")
    assert proc.returncode == 1, proc.stderr  # MOBILE-001 is BLOCKED from the start
    summary = json.loads(proc.stdout)
    assert sorted(summary["completed"]) == [
        "API-001", "API-002", "AUTH-001", "AUTH-002", "BUG-001", "UI-001",
    ]  # fmt: skip
    assert summary["blocked"] == ["MOBILE-001"] and summary["deferred"] == {}
    rows = {t["id"]: t for t in summary["tickets"]}
    assert rows["MOBILE-001"]["reason"] == "parent MOBILE-000 is DEFERRED and not retried"

    order = ticket_log(repo, "sage/demo")
    assert sorted(order) == sorted(summary["completed"])
    assert_commits_honour_every_edge(order, original["tickets"])
    assert git(repo, "show", "sage/demo:ui/login.html") == "<form>login</form>\n"

    after = index_at(repo, "sage/demo")
    assert list(after) == list(original)
    assert {k: after[k] for k in after if k != "tickets"} == {
        k: original[k] for k in original if k != "tickets"
    }
    for old, new in zip(original["tickets"], after["tickets"], strict=True):
        assert [k for k in new if k in old] == list(old), old["id"]  # key order kept
        for field in UPSTREAM_FIELDS:
            assert (field in new) == (field in old) and new.get(field) == old.get(field), (
                old["id"],
                field,
            )
        expected = "COMPLETED" if old["id"] in order else old["state"]
        assert new["state"] == expected

    # the DEFERRED epic retried: it and its child run, and the run ends clean
    again = submit("--repo", str(repo), "--local", "--json", "--branch", "sage/demo",
                   "--retry-deferred")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert sorted(json.loads(again.stdout)["completed"]) == ["MOBILE-000", "MOBILE-001"]
    final = index_at(repo, "sage/demo")
    assert {t["state"] for t in final["tickets"]} == {"COMPLETED"}
    assert "deferred_reason" not in next(t for t in final["tickets"] if t["id"] == "MOBILE-000")


# -- an eager run on a fleet: status and the report ---------------------------------------------


def test_an_eager_run_orders_by_every_edge_and_status_and_report_say_why_tickets_wait(
    fleet: Fleet, tmp_path: Path
) -> None:
    tickets = [
        story("CORE-001", run=writes("CORE-001"), blocks=["CORE-002", "CORE-003"], blockedBy=None),
        story("CORE-002", run=writes("CORE-002", ["CORE-001"]), dependencies=None),
        story("CORE-003", run=writes("CORE-003", ["CORE-001"]), blockedBy=["CORE-001"]),
        story(
            "CORE-004",
            run=writes("CORE-004", ["CORE-002", "CORE-003"]),
            blockedBy=["CORE-002"],
            dependencies=["CORE-003"],
        ),
        story("FAIL-001", run="echo broken >&2; exit 4", blocks=["NEXT-001"]),
        story("NEXT-001", run=writes("NEXT-001"), relatedTo=["CORE-004"]),
        story("AFTER-001", run=writes("AFTER-001"), blockedBy=["NEXT-001"]),
        {"id": "EPIC-001", "type": "epic", "state": "DEFERRED", "run": "true"},
        story("CHILD-001", run=writes("CHILD-001"), parent="EPIC-001"),
    ]
    repo = make_repo(tmp_path / "repo", {}, upstream_index(*tickets))
    with fleet.serving(repo) as (queue, _):
        res = fleet.submit(repo, "--wait", "--json", "--schedule", "eager", queue=queue)
        assert res.code == 1 and res.data is not None, res.stderr + fleet.logs()
        run_id = res.data["run_id"]
        order = ticket_log(repo, res.data["branch"])
        assert sorted(res.data["completed"]) == ["CORE-001", "CORE-002", "CORE-003", "CORE-004"]
        assert set(res.data["deferred"]) == {"FAIL-001"}
        assert sorted(res.data["blocked"]) == ["AFTER-001", "CHILD-001", "NEXT-001"]
        assert_commits_honour_every_edge(order, tickets)

        status = fleet.submit(repo, "status", run_id, "--json", queue=queue)
        assert status.code == 0 and status.data is not None, status.stderr
        reasons = {t["id"]: t["reason"] for t in status.data["tickets"]}
        assert reasons["NEXT-001"] == "dependency FAIL-001 is DEFERRED"  # from FAIL-001's blocks
        assert reasons["AFTER-001"] == "dependency NEXT-001 is BLOCKED"  # from its blockedBy
        assert reasons["CHILD-001"] == "parent EPIC-001 is DEFERRED and not retried"

        html = tmp_path / "report.html"
        report = fleet.submit(repo, "report", run_id, "--html", str(html), queue=queue)
        assert report.code == 0, report.stderr
    page = html.read_text()
    graph = page[page.index('aria-label="graph"') :]
    drawn = len(re.findall(r'<path class="c?e"', graph))
    # every edge between tickets in the plan, whichever field named it, each once:
    # CORE-002/003 -> 001, 004 -> 002 and 003, NEXT -> FAIL, AFTER -> NEXT
    assert drawn == 6
    assert "parent EPIC-001 is DEFERRED and not retried" in page
