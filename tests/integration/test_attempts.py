"""Attempt numbers and the fence, on a real redis-server: which heartbeats and outcomes count."""

from __future__ import annotations

import time

from sage_tasks.model.outcome import Outcome
from sage_tasks.store import keys, liveness
from sage_tasks.store.runstate import Phase, RunStatus
from tests.support.builders import run_with_ticket
from tests.support.redis_server import RedisServer


def test_each_start_is_a_new_attempt_and_only_the_current_one_beats_and_reports(
    redis_server: RedisServer,
) -> None:
    store = run_with_ticket(redis_server.client())
    client = redis_server.client()
    first = store.start_ticket("run1", "T", "w1@a")
    second = store.start_ticket("run1", "T", "w2@b")
    assert (first, second) == (1, 2)
    assert liveness.beat(client, "run1", "T", first) == liveness.Beat.STALE
    assert liveness.beat(client, "run1", "T", second) == liveness.Beat.OK
    assert not store.ran("run1", "T", {"outcome": "ok"}, attempt_no=first)
    assert store.ticket("run1", "T")["state"] == Phase.RUNNING
    assert client.hget(keys.results("run1"), "T") is None  # the fence keeps the result out
    assert store.ran("run1", "T", {"outcome": "ok"}, attempt_no=second)
    assert store.ticket("run1", "T")["state"] == Phase.RAN
    assert store.record("run1", "T")["result"] == '{"outcome": "ok"}'


def test_a_silent_attempt_is_taken_over_once_and_its_late_beats_and_outcome_are_refused(
    redis_server: RedisServer,
) -> None:
    store = run_with_ticket(redis_server.client())
    client = redis_server.client()
    attempt = store.start_ticket("run1", "T", "w1@a")
    now = time.time()
    assert not liveness.take_over(store, "run1", "T", 30, now)  # it beat just now
    assert liveness.take_over(store, "run1", "T", 30, now + 31)
    assert not liveness.take_over(store, "run1", "T", 30, now + 62)  # queued, not running
    rec = store.ticket("run1", "T")
    assert rec["state"] == Phase.QUEUED and rec["deaths"] == "1"
    assert "T" not in store.running("run1")
    # the partitioned attempt comes back: its beat and its outcome count for nothing
    assert liveness.beat(client, "run1", "T", attempt) == liveness.Beat.STALE
    assert not store.ran("run1", "T", {"outcome": "ok"}, attempt_no=attempt)
    store.requeue_ticket("run1", "T", attempt_no=attempt)
    assert store.start_ticket("run1", "T", "w2@b") == attempt + 1
    result = Outcome.from_json({"ticket": "T", "outcome": "ok", "attempt_no": attempt})
    assert liveness.void_outcome(result, store.ticket("run1", "T")) == "SUPERSEDED"
    result.attempt_no = attempt + 1
    assert liveness.void_outcome(result, store.ticket("run1", "T")) == ""


def test_a_cancelled_run_refuses_every_beat_and_a_final_ticket_says_so(
    redis_server: RedisServer,
) -> None:
    store = run_with_ticket(redis_server.client())
    client = redis_server.client()
    attempt = store.start_ticket("run1", "T", "w1@a")
    store.finish_ticket("run1", "T", Phase.COMPLETED, commit="abc")
    assert liveness.beat(client, "run1", "T", attempt) == liveness.Beat.FINAL
    assert store.start_ticket("run1", "T", "w2@b") == 0  # a final ticket starts no attempt
    liveness.cancel(store, "run1", "/nowhere", by="me@here")
    assert liveness.beat(client, "run1", "T", attempt) == liveness.Beat.CANCELLED
    info = store.get("run1")
    assert info is not None and info.status == RunStatus.CANCELLED
    assert info.error == "cancelled by me@here"
    assert "run1" not in store.active("/nowhere")
    assert client.ttl(keys.cancelled("run1")) > 0


def test_a_ticket_finished_after_its_run_was_cancelled_still_leaves_only_expiring_keys(
    redis_server: RedisServer,
) -> None:
    store = run_with_ticket(redis_server.client())
    client = redis_server.client()
    liveness.cancel(store, "run1", "/repo", by="someone@host")
    # a commit under way when the cancel came finishes after it
    store.finish_ticket("run1", "T", Phase.COMPLETED, commit="c0ffee")
    for key in (keys.final("run1"), keys.counts("run1"), keys.cancelled("run1")):
        assert 0 < client.ttl(key) <= 3600, key
