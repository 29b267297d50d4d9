"""A run's records on a Redis with default settings: each ticket's hash stays a compact
listpack, while its definition and result still reach everyone who reads them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sage_tasks.store import keys, liveness
from sage_tasks.store.runstate import Phase, RunStore
from sage_tasks.work.committer import ticket_title
from tests.support.builders import Submitted, run_with_ticket, ticket, writes
from tests.support.fleet import Fleet, unique_queue
from tests.support.gitrepo import git, make_repo
from tests.support.procs import wait_until
from tests.support.redis_server import RedisServer

#: longer than the 64 bytes a listpack value may have, by default
LONG_TITLE = "Validate the JWT of every request — signature, expiry, audience, issuer — ✓"
#: the failing ticket's output, which its DEFERRED reason keeps
OUTPUT = "compiler says: " + "x" * 90


def encoding(client: Any, key: str) -> str:
    found = client.object("encoding", key)
    return found.decode() if isinstance(found, bytes) else str(found)


@dataclass
class Run:
    """A run submitted while no commit worker served it, then run to its end."""

    fleet: Fleet
    repo: Path
    queue: str
    run_id: str
    tickets: dict[str, dict[str, Any]]
    #: ticket id -> the encoding of its hash while the run was only submitted
    submitted: dict[str, str]


@pytest.fixture(scope="module")
def records(shared_fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("records")
    tickets = [
        # its definition reaches its command whole: it copies its ticket file into its patch
        ticket("A", 'mkdir -p out && cp "$SAGE_TICKET_FILE" out/A.json', title=LONG_TITLE),
        ticket("B", f"test -f out/A.json && {writes('B')}", ["A"]),
        ticket("C", f"echo '{OUTPUT}'; exit 3"),
        ticket("D", writes("D"), ["C"]),
    ]
    repo = make_repo(root / "repo", {}, {"version": "1.0", "tickets": tickets})
    queue = unique_queue()
    res = shared_fleet.submit(repo, "--json", queue=queue)  # nobody serves the queue yet
    assert res.code == 0 and res.data is not None, res.stderr
    run_id = res.data["run_id"]
    client = shared_fleet.redis.client()
    submitted = {t["id"]: encoding(client, keys.ticket(run_id, t["id"])) for t in tickets}
    shared_fleet.start_commit(repo, queue)

    def finished() -> bool:
        return b"FINISHED" in (client.hget(keys.run(run_id), "status") or b"")

    assert wait_until(finished, timeout=120), shared_fleet.logs()
    return Run(shared_fleet, repo, queue, run_id, {t["id"]: t for t in tickets}, submitted)


def status(records: Run) -> Submitted:
    res = records.fleet.submit(
        records.repo, "status", records.run_id, "--json", queue=records.queue
    )
    assert res.code == 0 and res.data is not None, res.stderr
    return res


def test_the_redis_of_these_tests_has_the_default_listpack_limits(records: Run) -> None:
    config = records.fleet.redis.client().config_get("hash-max-listpack-*")
    assert config == {"hash-max-listpack-value": "64", "hash-max-listpack-entries": "512"}


def test_every_ticket_hash_of_a_submitted_run_is_a_listpack(records: Run) -> None:
    assert records.submitted == dict.fromkeys("ABCD", "listpack")


def test_finished_tickets_keep_listpack_hashes_and_their_long_values_apart(records: Run) -> None:
    client: Any = records.fleet.redis.client()  # redis-py types replies as "value or awaitable"
    # C's DEFERRED reason carries its output's tail: past 64 bytes, its hash is a table
    for tid in "ABD":
        assert encoding(client, keys.ticket(records.run_id, tid)) == "listpack", tid
    for tid in "ABCD":
        fields = client.hkeys(keys.ticket(records.run_id, tid))
        assert not {b"ticket", b"result", b"title"} & set(fields), (tid, fields)
    definitions = client.hgetall(keys.definitions(records.run_id))
    assert {k.decode(): json.loads(v) for k, v in definitions.items()} == {
        tid: records.tickets[tid] for tid in "ABCD"
    }
    results = {
        k.decode(): json.loads(v) for k, v in client.hgetall(keys.results(records.run_id)).items()
    }
    assert sorted(results) == ["A", "B", "C"]  # D was BLOCKED: its command never ran
    assert results["A"]["outcome"] == "ok" and results["A"]["ticket"] == "A"
    assert results["C"]["outcome"] == "failed" and OUTPUT in results["C"]["output"]


def test_the_definition_reaches_the_command_and_the_title_the_commit(records: Run) -> None:
    branch = f"sage/run-{records.run_id}"
    shown = json.loads(git(records.repo, "show", f"{branch}:out/A.json"))
    assert shown == records.tickets["A"]
    subjects = git(records.repo, "log", "--format=%s", branch).splitlines()
    assert f"A: {LONG_TITLE}" in subjects
    assert "C: ticket C" in subjects


def test_status_json_shows_states_reasons_and_commits_as_the_tickets_ended(records: Run) -> None:
    data = status(records).data
    assert data is not None
    rows = {t["id"]: t for t in data["tickets"]}
    assert {t: r["state"] for t, r in rows.items()} == {
        "A": "COMPLETED",
        "B": "COMPLETED",
        "C": "DEFERRED",
        "D": "BLOCKED",
    }
    assert data["deferred"]["C"].startswith("exit code 3") and OUTPUT in data["deferred"]["C"]
    assert rows["C"]["reason"] == data["deferred"]["C"]
    assert rows["D"]["reason"] == "dependency C is DEFERRED"
    head = git(records.repo, "rev-parse", f"sage/run-{records.run_id}").strip()
    assert data["head"] == head
    assert all(len(rows[t]["commit"]) == 40 and rows[t]["attempts"] == 1 for t in "ABC")


def test_the_report_shows_the_deferred_reason(records: Run, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    res = records.fleet.submit(
        records.repo, "report", records.run_id, "--html", str(page), queue=records.queue
    )
    assert res.code == 0, res.stderr
    assert OUTPUT in page.read_text()


# -- the store alone -----------------------------------------------------------------------


def stored(server: RedisServer, ttl: int = 3600) -> RunStore:
    definition = json.dumps({"id": "T", "title": LONG_TITLE, "run": "true"})
    return run_with_ticket(server.client(), ttl=ttl, ticket=definition)


def test_the_long_values_read_back_in_place_and_a_rerun_drops_the_result(
    redis_server: RedisServer,
) -> None:
    store = stored(redis_server)
    client = redis_server.client()
    attempt = store.start_ticket("run1", "T", "w1@a")
    assert store.ran("run1", "T", {"ticket": "T", "outcome": "ok"}, attempt_no=attempt)
    record = store.record("run1", "T")
    assert record["state"] == Phase.RAN
    assert json.loads(record["result"]) == {"ticket": "T", "outcome": "ok"}
    assert json.loads(record["ticket"])["title"] == LONG_TITLE
    assert ticket_title(record) == LONG_TITLE
    assert "result" not in store.ticket("run1", "T") and "ticket" not in store.ticket("run1", "T")
    assert store.snapshot("run1", "T")[1] == record
    assert encoding(client, keys.ticket("run1", "T")) == "listpack"
    store.rerun_ticket("run1", "T", ["a.txt"])
    assert "result" not in store.record("run1", "T")
    store.finish_ticket("run1", "T", Phase.COMPLETED, commit="c0ffee")
    assert not store.ran("run1", "T", {"ticket": "T", "outcome": "ok"})  # final: refused
    assert client.hget(keys.results("run1"), "T") is None


def test_a_record_stored_with_its_long_values_inline_reads_as_before(
    redis_server: RedisServer,
) -> None:
    store = stored(redis_server)
    client: Any = redis_server.client()
    client.hdel(keys.definitions("run1"), "T")
    inline = {"title": "old", "result": '{"ticket": "T", "outcome": "ok"}', "state": "RAN"}
    client.hset(keys.ticket("run1", "T"), mapping=inline)
    record = store.record("run1", "T")
    assert {k: record[k] for k in inline} == inline and "ticket" not in record
    assert ticket_title(record) == "old"
    assert store.record("run1", "nobody") == {}


def test_cancel_and_expiry_take_the_runs_definitions_and_results_with_it(
    redis_server: RedisServer,
) -> None:
    store = stored(redis_server, ttl=2)
    client = redis_server.client()
    attempt = store.start_ticket("run1", "T", "w1@a")
    assert store.ran("run1", "T", {"ticket": "T", "outcome": "ok"}, attempt_no=attempt)
    apart = (keys.definitions("run1"), keys.results("run1"))
    for key in apart:
        assert 0 < client.ttl(key) <= 2, key
        client.persist(key)  # as if written long ago: the cancel gives them the TTL again
    liveness.cancel(store, "run1", "/nowhere", by="me@here")
    for key in apart:
        assert 0 < client.ttl(key) <= 2, key
    assert wait_until(lambda: client.exists(*apart) == 0, timeout=10)
    assert not list(client.scan_iter("sage:run:run1*"))


def test_a_late_worker_does_not_bring_back_a_run_that_expired(
    redis_server: RedisServer,
) -> None:
    store = stored(redis_server, ttl=60)
    client = redis_server.client()
    attempt = store.start_ticket("run1", "T", "w1@a")
    for key in client.scan_iter("sage:run:run1*"):
        client.delete(key)  # the run's TTL ran out while its worker was cut off
    assert not store.ran("run1", "T", {"ticket": "T", "outcome": "ok"}, attempt_no=attempt)
    assert not store.ran("run1", "T", {"ticket": "T", "outcome": "ok"})  # unfenced too
    assert not store.start_ticket("run1", "T", "w2@b")
    store.requeue_ticket("run1", "T")
    assert not list(client.scan_iter("sage:run:run1*"))
