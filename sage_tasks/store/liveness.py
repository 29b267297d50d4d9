"""Liveness of a ticket's attempts: heartbeats, the heartbeat timeout, fencing, cancel.

Each time a worker starts a ticket's command it starts a new *attempt*, whose
number the ticket's record keeps (``attempt_no``). While the command runs, an
:class:`Attempt` beats every ``SAGE_HEARTBEAT_INTERVAL`` seconds. A beat is
refused when the attempt is no longer the current one (the supervisor took
the ticket away after ``SAGE_HEARTBEAT_TIMEOUT`` seconds of silence, or a
later delivery started it again), when the run was cancelled, or when the
ticket is already final; the attempt then kills its command's process group
at once, and its outcome is never committed (the worker's side is
:mod:`sage_tasks.work.attempt`). That is how a partitioned or
frozen worker that comes back stops a command nobody waits for any more.

The supervisor's side is :func:`take_over`: a RUNNING ticket whose heartbeat
is older than the heartbeat timeout is queued again (an attempt's beats and
outcome count only while its ticket is RUNNING under its number, so the old
attempt is fenced; the next delivery starts attempt n+1) and is sent again,
whatever the ticket and visibility timeouts: a dead host costs seconds, not
the visibility timeout.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from typing import Any

from sage_tasks.model.outcome import Outcome, OutcomeKind
from sage_tasks.store import events, keys
from sage_tasks.store.runstate import Phase, RunStatus, RunStore

log = logging.getLogger(__name__)


class Beat(StrEnum):
    """What a heartbeat learned."""

    OK = "ok"  # still the current attempt: keep going
    STALE = "stale"  # another attempt took the ticket over
    CANCELLED = "cancelled"  # the run was cancelled
    FINAL = "final"  # the ticket is already final (committed elsewhere)


#: refresh the heartbeat of attempt ARGV[1] (time ARGV[2]) unless it is fenced off
_BEAT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'cancelled' end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'COMPLETED' or state == 'DEFERRED' or state == 'BLOCKED' then return 'final' end
if state ~= 'RUNNING' then return 'stale' end
if (redis.call('HGET', KEYS[1], 'attempt_no') or '0') ~= ARGV[1] then return 'stale' end
redis.call('HSET', KEYS[1], 'heartbeat', ARGV[2])
return 'ok'
"""

#: a RUNNING ticket silent since before ARGV[1]: fence its attempt off (a ticket that is not
#: RUNNING refuses every attempt's beats and outcome), queue it again (time ARGV[2]);
#: KEYS[2] is the run's running set. 1 when taken, 0 when it beat or moved on meanwhile
_TAKE_OVER = """
if redis.call('HGET', KEYS[1], 'state') ~= 'RUNNING' then return 0 end
local beat = tonumber(redis.call('HGET', KEYS[1], 'heartbeat') or '0') or 0
local resent = tonumber(redis.call('HGET', KEYS[1], 'resent') or '0') or 0
if math.max(beat, resent) >= tonumber(ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'deaths', 1)
redis.call('HSET', KEYS[1], 'state', 'QUEUED', 'queued', ARGV[2], 'resent', ARGV[2])
redis.call('SREM', KEYS[2], ARGV[3])
return 1
"""


def beat(client: Any, run_id: str, ticket_id: str, attempt_no: int) -> Beat:
    """One heartbeat of an attempt; says whether the attempt may go on."""
    found = client.eval(
        _BEAT,
        2,
        keys.ticket(run_id, ticket_id),
        keys.cancelled(run_id),
        str(attempt_no),
        str(time.time()),
    )
    return Beat(found.decode() if isinstance(found, bytes) else str(found))


def take_over(store: RunStore, run_id: str, ticket_id: str, timeout: float, now: float) -> bool:
    """Take a silent ticket from its attempt: False when it beat (or moved on) meanwhile.

    Atomic against a late heartbeat: a beat that lands first keeps the ticket;
    one that lands after is refused, and its attempt kills its command.
    """
    found = store.r.eval(
        _TAKE_OVER,
        2,
        keys.ticket(run_id, ticket_id),
        keys.running(run_id),
        str(now - timeout),
        str(now),
        ticket_id,
    )
    return bool(found)


def void_outcome(result: Outcome, record: dict[str, str]) -> str:
    """Why an outcome must not be committed ('' when it may be).

    An attempt that was stopped says so (``stale``, ``cancelled``); an
    outcome of an attempt that is no longer the ticket's current one (the
    late copy of a ticket taken over after its heartbeat timed out) is void.
    """
    if result.kind == OutcomeKind.CANCELLED:
        return Phase.CANCELLED.value
    if result.kind == OutcomeKind.STALE:
        return "SUPERSEDED"
    attempt_no = result.attempt_no
    if attempt_no is not None and str(attempt_no) != record.get("attempt_no", ""):
        return "SUPERSEDED"
    return ""


#: how many messages one round trip reads while searching the broker
_SCAN_PAGE = 500
#: kombu's Redis transport keeps delivered, unacknowledged messages in this hash
_UNACKED = "unacked"


def message_mark(run_id: str, ticket_id: str, record: dict[str, str]) -> bytes:
    """What identifies the ticket's current ``run_ticket`` message among the broker's.

    A ticket sent again after its attempt went silent: its new message's task
    id (the silent host's own delivery may still sit unacknowledged). Else
    the task's arguments as Celery's headers spell them (``argsrepr``); ids
    are checked before they are stored, so they hold no quotes.
    """
    if int(record.get("deaths") or 0) > 0 and record.get("resent_task"):
        return record["resent_task"].encode()
    return f"('{run_id}', '{ticket_id}')".encode()


def held_by_broker(client: Any, marks: dict[str, bytes]) -> set[str]:
    """Which tickets (ticket id -> :func:`message_mark`) have a ``run_ticket`` message
    delivered to a worker and not yet acknowledged (prefetched, running or due later)."""
    found: set[str] = set()
    for _, raw in client.hscan_iter(_UNACKED, count=_SCAN_PAGE):
        if b"sage.run_ticket" in raw:
            found.update(tid for tid, mark in marks.items() if mark in raw)
        if len(found) == len(marks):
            break
    return found


def is_cancelled(store: RunStore, run_id: str) -> bool:
    """True once ``sage-submit cancel`` has stopped the run."""
    return bool(store.r.exists(keys.cancelled(run_id)))


def cancel(store: RunStore, run_id: str, repo: str, *, by: str) -> None:
    """Mark the run cancelled: nothing more is sent or committed, running attempts stop.

    The mark is read by every heartbeat (commands are killed within one
    interval), by every delivery of a ticket (queued work is dropped unrun),
    and by the commit queue under its lock (a commit under way finishes).
    """
    store.r.set(keys.cancelled(run_id), by, ex=store.ttl)
    store.finish(run_id, repo, status=RunStatus.CANCELLED, error=f"cancelled by {by}")


def mark_cancelled(store: RunStore, run_id: str, ticket_id: str, attempt_no: int = 0) -> None:
    """The ticket stopped because its run was cancelled (unless it is final, or fenced off)."""
    fields = {"state": Phase.CANCELLED.value, "ended": str(time.time())}
    fence = str(attempt_no) if attempt_no else ""
    if store._set_unless_final(run_id, ticket_id, fields, running=False, fence=fence):
        events.ticket_event(run_id, ticket_id, Phase.CANCELLED.value)
