"""Group commit: outcomes waiting for one branch become one chain, published with one CAS.

A real ``redis-server`` holds the run; the commit path runs in this process
on a real repository whose ref updates are all logged, so a move of the
branch shows as one reflog entry.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from sage_tasks.config import Settings
from sage_tasks.store.runstate import RunStore
from sage_tasks.work import committer
from sage_tasks.work.runtime import Runtime
from tests.support.builders import run_info, ticket
from tests.support.gitrepo import INDEX, git, make_patch, make_repo, ticket_state
from tests.support.redis_server import RedisServer

IDS = ("A", "B", "C", "D")


def start_run(
    redis_server: RedisServer, tmp_path: Path, outcomes: dict[str, str]
) -> tuple[Runtime, RunStore, Path, dict[str, dict[str, object]], str]:
    """A run of ``IDS`` whose outcomes (ok / failed / conflict) all wait for the commit queue."""
    repo = make_repo(
        tmp_path / "repo",
        {"shared.txt": "one\ntwo\n"},
        {"version": "1.0", "tickets": [ticket(t) for t in IDS]},
        bare=True,
    )
    git(repo, "config", "core.logAllRefUpdates", "always")
    base = git(repo, "rev-parse", "main").strip()
    git(repo, "branch", "sage/group", base)
    run_id = "group1"
    info = run_info(
        run_id,
        repo=str(repo.resolve()),
        repo_url=str(repo),
        branch="sage/group",
        base=base,
        tickets=len(IDS),
        to_run=len(IDS),
        created=time.time(),
        status="RUNNING",
    )
    store = RunStore(redis_server.client(), ttl=3600)
    records = {t: {"state": "RUNNING", "title": f"ticket {t}"} for t in IDS}
    store.create(info, json.dumps({"batches": [list(IDS)], "deps": {}}), records)
    results: dict[str, dict[str, object]] = {}
    for tid, kind in outcomes.items():
        if kind == "failed":
            results[tid] = {"ticket": tid, "outcome": "failed", "reason": "exit 1"}
        else:
            changes = {"shared.txt": f"one\n{tid}\n"} if kind == "conflict" else {}
            changes[f"out/{tid}.txt"] = f"{tid}\n"
            data = make_patch(repo, base, dict(changes), tmp_path / f"work-{tid}")
            digest = hashlib.sha256(data).hexdigest()
            store.put_patch(run_id, digest, data)
            results[tid] = {"ticket": tid, "outcome": "ok", "patch": digest}
        store.ran(run_id, tid, results[tid])
    rt = Runtime(Settings(broker_url=redis_server.url))
    rt.serve(repo)
    return rt, store, repo, results, base


def branch_moves(repo: Path) -> int:
    return len(git(repo, "reflog", "show", "--format=%H", "refs/heads/sage/group").split())


def trailers(repo: Path, base: str) -> list[str]:
    log = git(repo, "log", "--format=%(trailers:key=Sage-Ticket,valueonly)", f"{base}..sage/group")
    return [line.strip() for line in log.splitlines() if line.strip()]


def test_waiting_outcomes_are_committed_as_one_chain_with_one_move_of_the_branch(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    outcomes = {"A": "ok", "B": "ok", "C": "failed", "D": "ok"}
    rt, store, repo, results, base = start_run(redis_server, tmp_path, outcomes)
    moves = branch_moves(repo)
    done = committer.commit_ticket(rt, results["B"], "group1", "B")
    assert done == {"ticket": "B", "state": "COMPLETED"}
    assert branch_moves(repo) == moves + 1
    # one commit a ticket, the task's own first, each with its index change
    assert trailers(repo, base) == ["D", "C", "A", "B"]
    for i, _tid in enumerate(["B", "A", "C", "D"]):
        changed = git(repo, "diff", "--name-only", f"sage/group~{4 - i}", f"sage/group~{3 - i}")
        assert INDEX in changed.split()
    assert {t: ticket_state(repo, "sage/group", t)["state"] for t in IDS} == {
        "A": "COMPLETED",
        "B": "COMPLETED",
        "C": "DEFERRED",
        "D": "COMPLETED",
    }
    finals = store.finals("group1")
    assert finals == {"A": "COMPLETED", "B": "COMPLETED", "C": "DEFERRED", "D": "COMPLETED"}
    assert store.waiting("group1") == []
    assert store.get("group1").head == git(repo, "rev-parse", "sage/group").strip()  # type: ignore[union-attr]


def test_a_redelivered_commit_task_of_a_ticket_in_a_chain_is_a_no_op(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    rt, _store, repo, results, base = start_run(redis_server, tmp_path, dict.fromkeys(IDS, "ok"))
    committer.commit_ticket(rt, results["A"], "group1", "A")
    head = git(repo, "rev-parse", "sage/group").strip()
    for tid in ("A", "C", "D", "B"):
        assert committer.commit_ticket(rt, results[tid], "group1", tid)["state"] == "COMPLETED"
    assert git(repo, "rev-parse", "sage/group").strip() == head
    assert sorted(trailers(repo, base)) == sorted(IDS)


def test_a_chain_member_whose_record_was_not_written_is_recorded_by_its_own_task(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """As after a crash between the branch's move and the records: the index says it all."""
    rt, store, repo, results, _base = start_run(redis_server, tmp_path, dict.fromkeys(IDS, "ok"))
    committer.commit_ticket(rt, results["A"], "group1", "A")
    head = git(repo, "rev-parse", "sage/group").strip()
    rt.redis.hset("sage:run:group1:t:C", mapping={"state": "RAN"})
    rt.redis.hdel("sage:run:group1:final", "C")
    assert committer.commit_ticket(rt, results["C"], "group1", "C")["state"] == "COMPLETED"
    assert git(repo, "rev-parse", "sage/group").strip() == head
    assert store.finals("group1")["C"] == "COMPLETED"


def test_a_conflicting_member_that_may_run_again_is_left_out_of_the_chain(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    rt, store, repo, results, base = start_run(
        redis_server, tmp_path, {"A": "conflict", "B": "conflict", "C": "ok"}
    )
    rt.redis.hset("sage:run:group1", "extra", json.dumps({"conflict_retries": 1}))
    done = committer.commit_ticket(rt, results["A"], "group1", "A")
    assert done == {"ticket": "A", "state": "COMPLETED"}
    # B conflicts with A: nothing of it is written; its own task runs it again
    assert trailers(repo, base) == ["C", "A"]
    assert store.ticket("group1", "B")["state"] == "RAN"
    assert committer.commit_ticket(rt, results["B"], "group1", "B") == {
        "ticket": "B",
        "state": committer.RERUN,
    }
