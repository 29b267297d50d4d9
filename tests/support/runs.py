"""Reading what a run left: the commits and the index on its branch, its record in Redis."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from sage_tasks.store import keys
from tests.support.gitrepo import INDEX, git
from tests.support.procs import wait_until

# -- the branch ----------------------------------------------------------------------


def ticket_log(repo: Path, branch: str) -> list[str]:
    """Sage-Ticket trailers of the branch's commits, oldest first."""
    out = git(
        repo, "log", "--reverse", "--format=%(trailers:key=Sage-Ticket,valueonly)%x00", branch
    )
    return [t.strip() for t in out.split("\0") if t.strip()]


def index_at(repo: Path, ref: str) -> dict[str, Any]:
    """The ticket index as the commit ``ref`` holds it."""
    data: dict[str, Any] = json.loads(git(repo, "show", f"{ref}:{INDEX}"))
    return data


def states(repo: Path, ref: str) -> dict[str, str]:
    """Ticket id -> state in the index at ``ref``."""
    return {t["id"]: t["state"] for t in index_at(repo, ref)["tickets"]}


def tickets_at(repo: Path, ref: str) -> dict[str, dict[str, Any]]:
    """Ticket id -> the whole ticket, as the index at ``ref`` holds it."""
    return {t["id"]: t for t in index_at(repo, ref)["tickets"]}


def check_commits(repo: Path, branch: str, tickets: list[dict[str, Any]]) -> list[str]:
    """Exactly one commit per ticket, each after the commits of all its dependencies;
    the tickets in commit order."""
    order = ticket_log(repo, branch)
    counts = Counter(order)
    twice = sorted(t for t, n in counts.items() if n > 1)
    assert not twice, f"committed more than once: {twice}"
    assert sorted(order) == sorted(t["id"] for t in tickets), order
    pos = {tid: i for i, tid in enumerate(order)}
    for t in tickets:
        for dep in t["dependencies"]:
            assert pos[dep] < pos[t["id"]], f"{t['id']} committed before its dependency {dep}"
    return order


# -- what sage-submit says of it -------------------------------------------------------


def rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Ticket id -> its row in a run's JSON (``--wait --json``, ``status --json``)."""
    return {t["id"]: t for t in data["tickets"]}


# -- the record in Redis -----------------------------------------------------------------


def latest_run(client: Any) -> str:
    """The id of the run submitted last ('' before any)."""
    ids = client.zrevrange(keys.RUNS, 0, 0)
    return ids[0].decode() if ids else ""


def record(client: Any, run_id: str, tid: str) -> dict[str, str]:
    """The record of ticket ``tid`` of the run ({} before it has one)."""
    data = client.hgetall(keys.ticket(run_id, tid))
    return {k.decode(): v.decode() for k, v in data.items()}


def wait_for_run(client: Any, timeout: float = 30) -> str:
    """Wait until a run was submitted; its id."""
    found: list[str] = []

    def submitted() -> bool:
        rid = latest_run(client)
        if rid:
            found.append(rid)
        return bool(rid)

    assert wait_until(submitted, timeout=timeout), "no run was submitted"
    return found[-1]


def wait_state(
    client: Any, run_id: str, tid: str, state: str, timeout: float = 60
) -> dict[str, str]:
    """Wait until the run's record shows ``tid`` in ``state``; returns the record."""
    seen: list[dict[str, str]] = []

    def reached() -> bool:
        rec = record(client, run_id, tid)
        seen.append(rec)
        return rec.get("state") == state

    assert wait_until(reached, timeout=timeout, interval=0.1), (
        f"{tid} never reached {state}: {seen[-1] if seen else {}}"
    )
    return seen[-1]
