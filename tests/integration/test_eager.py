"""``--schedule eager`` on real processes: redis-server, sage-worker tickets/commit, sage-submit.

Each ticket's command checks that its dependencies' work is in its worktree;
the run records in Redis tell how often each ticket was sent and when it ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sage_tasks.app.celery_app import make_app
from sage_tasks.config import load_settings
from sage_tasks.dispatch.names import TASK_COMMIT
from sage_tasks.store import keys
from tests.support.builders import run_info, ticket, writes
from tests.support.fleet import Fleet, unique_queue
from tests.support.gitrepo import git, make_repo
from tests.support.procs import wait_until
from tests.support.redis_server import RedisServer
from tests.support.runs import record, states, ticket_log

pytestmark = pytest.mark.fleet(concurrency=3)


def records(fleet: Fleet, run_id: str, ids: list[str]) -> dict[str, dict[str, str]]:
    client = fleet.redis.client()
    return {tid: record(client, run_id, tid) for tid in ids}


def most_in_flight(recs: dict[str, dict[str, str]]) -> int:
    """The most tickets between their start and their commit at one moment."""
    events = []
    for rec in recs.values():
        events += [(float(rec["started"]), 1), (float(rec["ended"]), -1)]
    best = cur = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        cur += step
        best = max(best, cur)
    return best


def test_every_ticket_sees_its_dependencies_work_and_is_sent_once(fleet: Fleet, run: Any) -> None:
    deps = {
        "A": [],
        "B": ["A"],
        "C": ["A"],
        "D": ["B", "C"],
        "E": [],
        "F": ["E", "D"],
        "G": ["C"],
        "H": ["G", "F", "B"],
    }
    tickets = [ticket(t, "sleep 0.2; " + writes(t, d), d) for t, d in deps.items()]
    repo, res = run(tickets, "--schedule", "eager", expect=0)
    data = res.data
    assert sorted(data["completed"]) == sorted(deps)
    order = ticket_log(repo, data["branch"])
    assert sorted(order) == sorted(deps)
    for t, ds in deps.items():
        assert all(order.index(d) < order.index(t) for d in ds), order
    assert set(states(repo, data["branch"]).values()) == {"COMPLETED"}
    recs = records(fleet, data["run_id"], list(deps))
    assert {t: r.get("dispatches") for t, r in recs.items()} == dict.fromkeys(deps, "1")


def test_parallel_caps_the_tickets_in_flight(fleet: Fleet, run: Any) -> None:
    ids = [f"W{i}" for i in range(6)]
    tickets = [ticket(t, "sleep 0.6; " + writes(t)) for t in ids]
    _repo, res = run(tickets, "--schedule", "eager", "--parallel", "2", expect=0)
    recs = records(fleet, res.data["run_id"], ids)
    assert most_in_flight(recs) == 2
    assert res.data["max_parallel"] <= 2


def test_the_most_urgent_ready_ticket_goes_first(run: Any) -> None:
    tickets = [
        ticket("A", writes("A"), priority="P3"),
        ticket("B", writes("B"), priority="P1"),
        ticket("C", writes("C"), priority="P0"),
        ticket("D", writes("D"), priority="P1"),
        # ready after C: more urgent than the P1 and P3 tickets still waiting
        ticket("E", writes("E", ["C"]), ["C"], priority="P0"),
    ]
    repo, res = run(tickets, "--schedule", "eager", "--parallel", "1", expect=0)
    assert ticket_log(repo, res.data["branch"]) == ["C", "E", "B", "D", "A"]


def test_a_duplicate_commit_delivery_sends_no_dependent_twice(
    fleet: Fleet, run: Any, tmp_path: Path
) -> None:
    """While the run goes on, A's commit task is delivered a second time."""
    flag = tmp_path / "go"
    tickets = [
        ticket("A", writes("A")),
        # B waits until the test has delivered A's commit again
        ticket("B", f"while [ ! -f {flag} ]; do sleep 0.1; done; " + writes("B", ["A"]), ["A"]),
        ticket("C", writes("C", ["A"]), ["A"]),
        ticket("D", writes("D", ["B", "C"]), ["B", "C"]),
    ]
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": tickets})
    queue = unique_queue()
    node = fleet.start_commit(repo, queue)
    try:
        res = fleet.submit(repo, "--schedule", "eager", "--json", queue=queue)
        assert res.code == 0, res.stderr
        run_id = res.data["run_id"] if res.data else ""
        client = fleet.redis.client()

        def b_running() -> bool:
            return client.hget(keys.ticket(run_id, "B"), "state") == b"RUNNING"

        assert wait_until(b_running, timeout=60), fleet.logs()
        result = json.loads(client.hget(keys.results(run_id), "A") or b"{}")
        app = make_app(load_settings(broker_url=fleet.redis.url))
        again = app.send_task(TASK_COMMIT, args=(result, run_id, "A"), queue=queue)
        assert again.get(timeout=60) == {"ticket": "A", "state": "COMPLETED"}
        flag.write_text("go")

        def finished() -> bool:
            return b"FINISHED" in (client.hget(keys.run(run_id), "status") or b"")

        assert wait_until(finished, timeout=90), fleet.logs()
        recs = records(fleet, run_id, list("ABCD"))
        assert {t: r.get("dispatches") for t, r in recs.items()} == dict.fromkeys("ABCD", "1")
        assert sorted(ticket_log(repo, f"sage/run-{run_id}")) == list("ABCD")
    finally:
        fleet.kill(node)


def test_a_commit_worker_dying_between_commit_and_dispatch_loses_and_repeats_nothing(
    fleet: Fleet, run: Any
) -> None:
    """The commit worker dies after the release claimed B and C, before it sent them.

    The supervisor is slowed right down, so only the redelivered commit task
    can send them: it finds A's commit already on the branch and still sends.
    """
    tickets = [
        ticket("A", writes("A")),
        ticket("B", writes("B", ["A"]), ["A"]),
        ticket("C", writes("C", ["A"]), ["A"]),
    ]
    env = {"SAGE_FAULT": "eager-claimed", "SAGE_SUPERVISOR_INTERVAL": "3600"}
    repo, res = run(tickets, "--schedule", "eager", expect=0, commit_env=env)
    run_id = res.data["run_id"]
    recs = records(fleet, run_id, ["A", "B", "C"])
    assert {t: r.get("dispatches") for t, r in recs.items()} == dict.fromkeys("ABC", "1")
    assert fleet.redis.client().exists(keys.fault_once("eager-claimed", run_id))
    assert ticket_log(repo, res.data["branch"])[0] == "A"
    assert len(ticket_log(repo, res.data["branch"])) == 3


def test_wait_and_json_summary_are_the_same_as_in_level_mode(run: Any) -> None:
    tickets = [
        ticket("OK", writes("OK")),
        ticket("BAD", "echo broke >&2; exit 3"),
        ticket("CHILD", writes("CHILD"), ["BAD"]),
        ticket("GRAND", writes("GRAND"), ["CHILD", "OK"]),
        ticket("AFTER", writes("AFTER", ["OK"]), ["OK"]),
    ]
    outcomes = {}
    for schedule in ("levels", "eager"):
        repo, res = run(tickets, "--schedule", schedule, expect=1)
        data = res.data
        outcomes[schedule] = (
            sorted(data["completed"]),
            sorted(data["deferred"]),
            sorted(data["blocked"]),
            sorted(data),
        )
        assert "exit code 3" in data["deferred"]["BAD"] and "broke" in data["deferred"]["BAD"]
        assert git(repo, "rev-parse", data["branch"]).strip() == data["head"]
        assert sorted(ticket_log(repo, data["branch"])) == ["AFTER", "BAD", "OK"]
    assert outcomes["levels"] == outcomes["eager"]
    assert outcomes["eager"][:3] == (["AFTER", "OK"], ["BAD"], ["CHILD", "GRAND"])


def test_an_eager_run_of_only_completed_tickets_ends_at_once(run: Any) -> None:
    tickets = [ticket("DONE", "exit 9", state="COMPLETED")]
    _repo, res = run(tickets, "--schedule", "eager", expect=0)
    assert res.data["completed"] == []


@pytest.mark.parametrize("schedule", ["levels", "eager"])
def test_tickets_whose_paths_overlap_are_never_in_flight_together(
    fleet: Fleet, run: Any, schedule: str
) -> None:
    tickets = [
        ticket("P1", "sleep 0.8; " + writes("P1"), paths=["out/**"]),
        ticket("P2", "sleep 0.8; " + writes("P2"), paths=["out/P2.txt"]),
        ticket("P3", "sleep 0.8; " + writes("P3"), paths=["out"]),
        ticket("Q", "sleep 0.8; mkdir -p q && echo q > q/q.txt", paths=["q/*"]),
    ]
    _repo, res = run(tickets, "--schedule", schedule, expect=0)
    recs = records(fleet, res.data["run_id"], ["P1", "P2", "P3", "Q"])
    apart = {t: (float(recs[t]["started"]), float(recs[t]["ended"])) for t in recs}
    for a, b in [("P1", "P2"), ("P1", "P3"), ("P2", "P3")]:
        (s1, e1), (s2, e2) = apart[a], apart[b]
        assert e1 <= s2 or e2 <= s1, (a, b, apart)
    # Q shares no path with them: it runs beside the first of them
    assert apart["Q"][0] < min(apart[t][1] for t in ("P1", "P2", "P3"))


def test_bad_paths_are_refused_naming_ticket_and_field(fleet: Fleet, tmp_path: Path) -> None:
    tickets = [ticket("GOOD", "true"), ticket("BADP", "true", paths=["/abs/**"])]
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": tickets})
    res = fleet.submit(repo, "--schedule", "eager", "--wait", queue=unique_queue())
    assert res.code == 2
    assert "ticket BADP: 'paths'[0] '/abs/**' is absolute" in res.stderr
    assert "Traceback" not in res.stderr
    assert git(repo, "branch", "--list", "sage/*").strip() == ""


def test_the_supervisors_pass_sends_claimed_tickets_that_were_never_sent(
    redis_server: RedisServer,
) -> None:
    """A commit worker died after its release claimed B and C: one pass sends each once.

    No worker here: the sent chains wait in the ticket queue, where they are counted.
    """
    from sage_tasks.dispatch import eager
    from sage_tasks.store.readiness import ReadySet
    from sage_tasks.store.runstate import Phase
    from sage_tasks.work.runtime import app_runtime

    settings = load_settings(broker_url=redis_server.url)
    app = make_app(settings)
    rt = app_runtime(app)
    plan: dict[str, Any] = {"batches": [["A", "D"], ["B", "C"]], "deps": {"B": ["A"], "C": ["A"]}}
    info = run_info(
        "repair1",
        commit_queue="commit-x",
        batches=2,
        tickets=4,
        to_run=4,
        status="RUNNING",
        extra={"schedule": "eager", "planned": 4, "cap": 0},
    )
    rank = {"A": 0, "B": 1, "C": 2, "D": 3}
    rt.store.create(
        info,
        json.dumps(plan),
        {t: {"state": "PENDING", "deps": json.dumps(plan["deps"].get(t, [])), "rank": str(n)}
         for t, n in rank.items()},
    )  # fmt: skip
    ready = ReadySet(rt.redis, "repair1", ttl=3600)
    assert ready.init({t: plan["deps"].get(t, []) for t in rank}, rank, {})
    assert ready.release("", "", cap=0, paths=False) == ["A", "D"]  # claimed at the start
    for tid in ("A", "D"):  # sent, ran and were committed
        ready.mark_sent(tid)
        rt.store.finish_ticket("repair1", tid, Phase.COMPLETED)
    ready.release("A", "COMPLETED", cap=0, paths=False)  # ... and then the worker died
    ready.release("D", "COMPLETED", cap=0, paths=False)
    client = redis_server.client()
    assert client.llen(settings.ticket_queue) == 0
    for _ in range(3):
        eager.pump(app, rt, "repair1")
    sent = [
        json.loads(m)["headers"]["argsrepr"] for m in client.lrange(settings.ticket_queue, 0, -1)
    ]
    assert sorted(sent) == ["('repair1', 'B')", "('repair1', 'C')"]
    assert rt.store.ticket("repair1", "B")["dispatches"] == "1"
    assert all(client.ttl(k) > 0 for k in keys.eager("repair1") if client.exists(k))
