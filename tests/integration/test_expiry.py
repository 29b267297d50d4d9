"""Nothing a run writes to Redis stays forever: every key expires with the run's results."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sage_tasks.store import keys
from tests.support.builders import ticket, writes
from tests.support.fleet import Fleet, unique_queue
from tests.support.gitrepo import make_repo

TTL = 6

pytestmark = pytest.mark.fleet(concurrency=None, env={"SAGE_RESULT_TTL": str(TTL)})


def test_every_key_of_a_finished_run_expires_but_kombus_queue_bindings(
    fleet: Fleet, tmp_path: Path
) -> None:
    tickets = [
        ticket("A", writes("A")),
        ticket("B", writes("B", ["A"]), ["A"]),
        ticket("C", "exit 1"),
        ticket("D", writes("D"), ["C"]),
    ]
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": tickets})
    queue = unique_queue()
    fleet.start_tickets("tickets", concurrency=2)
    fleet.start_commit(repo, queue)
    res = fleet.submit(repo, "--wait", "--json", queue=queue)
    assert res.code == 1, res.stderr + fleet.logs()
    client = fleet.redis.client()
    during = {k.decode() for k in client.scan_iter("*")}
    assert any(k.startswith("sage:run:") for k in during)
    run_id = res.data["run_id"] if res.data else ""
    # a ticket's long values, kept apart from its hash, go with the run
    assert {keys.definitions(run_id), keys.results(run_id)} <= during
    assert any(k.startswith("celery-task-meta-") for k in during)
    forever = [k for k in during if client.ttl(k) == -1 and not k.startswith("_kombu.")]
    assert forever == [], forever
    time.sleep(TTL + 2)
    left = sorted(k.decode() for k in client.scan_iter("*") if not k.startswith(b"_kombu."))
    # Celery's chord-done claims keep their own five-minute expiry; nothing else is left
    assert all(k.startswith("celery-taskset-meta-") and k.endswith(".c") for k in left), left
    assert all(0 < client.ttl(k) <= 300 for k in left), left
