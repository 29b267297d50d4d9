"""Turn a plan into Celery chords, one group at a time.

The plan is stored with the run in Redis; the producer sends only
``prepare_run`` to the repository's commit queue, which prepares the branch
and sends the first group's chord. Each chord's body, the batch barrier,
sends the next one. The whole chain is never built as one canvas: its
messages would grow with the square of the number of batches.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from celery import Celery, chord, group
from celery.canvas import Signature

from sage_tasks.dispatch.names import TASK_BATCH_DONE, TASK_COMMIT, TASK_PREPARE, TASK_RUN
from sage_tasks.errors import RepositoryRefused
from sage_tasks.store.keys import RUN_ID_RE
from sage_tasks.store.runstate import (
    FINAL_PHASES,
    Phase,
    RunInfo,
    RunStatus,
    blocking_reason,
)

if TYPE_CHECKING:  # the submitter sends without loading what the workers run
    from sage_tasks.work.runtime import Runtime

log = logging.getLogger(__name__)


def ticket_chain(app: Celery, run_id: str, ticket_id: str, commit_queue: str) -> Signature:
    """``run_ticket`` then ``commit_ticket`` for one ticket; the run task is immutable."""
    run = app.signature(TASK_RUN, args=(run_id, ticket_id), immutable=True)
    commit = app.signature(TASK_COMMIT, args=(run_id, ticket_id), queue=commit_queue)
    return run | commit


def commit_only(
    app: Celery, result: dict[str, Any], run_id: str, ticket_id: str, commit_queue: str
) -> Signature:
    """Send a ticket's stored outcome to the commit queue again."""
    return app.signature(
        TASK_COMMIT, args=(result, run_id, ticket_id), queue=commit_queue, immutable=True
    )


def request_start(app: Celery, info: RunInfo) -> None:
    """Ask the repository's commit worker to start the run (stored before: see RunStore.create)."""
    app.send_task(TASK_PREPARE, args=(info.run_id,), queue=info.commit_queue)


#: run id -> the groups of its plan, as this process read them (a run's plan never changes)
_batches: dict[str, list[list[str]]] = {}
_BATCHES_KEPT = 16


def batches_of(rt: Runtime, run_id: str) -> list[list[str]]:
    """The groups of the run's stored plan (read from Redis once per process and run)."""
    found = _batches.get(run_id)
    if found is not None:
        return found
    raw = rt.store.plan_json(run_id)
    if raw is None:
        return []
    batches: list[list[str]] = json.loads(raw)["batches"]
    while len(_batches) >= _BATCHES_KEPT:
        _batches.pop(next(iter(_batches)))
    _batches[run_id] = batches
    return batches


def advance(app: Celery, rt: Runtime, run_id: str, start: int) -> None:
    """Send the first group from ``start`` on that still has tickets to run, or end the run.

    Tickets whose dependencies ended DEFERRED or BLOCKED are marked BLOCKED
    here instead of being sent; a group left empty is passed over.
    """
    store = rt.store
    info = store.get(run_id)
    if info is None:
        log.warning("run %s is gone from Redis; nothing to advance", run_id)
        return
    if info.status == RunStatus.CANCELLED:
        log.info("run %s was cancelled; nothing more is sent", run_id)
        return
    batches = batches_of(rt, run_id)
    index = start
    while index < len(batches):
        ticket_ids = batches[index]
        records = store.tickets(run_id, ticket_ids)
        # tickets of one group never depend on each other: their dependencies' records
        # are read once, in one round trip
        deps = {tid: json.loads(records[tid].get("deps", "[]")) for tid in ticket_ids}
        dep_records = store.tickets(run_id, sorted({d for ds in deps.values() for d in ds}))
        send: list[str] = []
        for tid in ticket_ids:
            if records[tid].get("state") in (Phase.COMPLETED, Phase.DEFERRED, Phase.BLOCKED):
                continue
            reason = blocking_reason(dep_records, deps[tid]) if deps[tid] else ""
            if reason:
                store.finish_ticket(run_id, tid, Phase.BLOCKED, reason=reason)
            else:
                send.append(tid)
        if send:
            _send_group(app, rt, info, index, send)
            return
        store.record_batch(run_id, index, tickets=ticket_ids, sent=time.time(), ended=time.time())
        store.claim_batch_done(run_id, index)
        index += 1
    store.finish(run_id, info.repo, status=RunStatus.FINISHED)
    log.info("run %s finished", run_id)


def _send_group(app: Celery, rt: Runtime, info: RunInfo, index: int, ticket_ids: list[str]) -> None:
    run_id = info.run_id
    header = group(ticket_chain(app, run_id, tid, info.commit_queue) for tid in ticket_ids)
    body = app.signature(
        TASK_BATCH_DONE, args=(run_id, index), queue=info.commit_queue, immutable=True
    )
    rt.store.mark_queued(run_id, ticket_ids, index)
    rt.store.record_batch(run_id, index, tickets=ticket_ids, sent=time.time())
    rt.store.update(run_id, batch=index, status=RunStatus.RUNNING.value)
    result = chord(header)(body)
    rt.store.record_batch(
        run_id, index, chord=result.id, group=getattr(result.parent, "id", None) or ""
    )
    log.info("run %s: sent batch %d (%d tickets)", run_id, index + 1, len(ticket_ids))


def finish_batch(app: Celery, rt: Runtime, run_id: str, index: int) -> bool:
    """The batch barrier: record the batch and send the next group (once per batch)."""
    if RUN_ID_RE.fullmatch(str(run_id)) is None or index < 0:
        raise RepositoryRefused(f"refused: invalid batch {run_id!r}/{index!r}")
    info = rt.store.get(run_id)
    if info is None:
        return False
    rt.check_serves(info.repo, f"run {run_id}")
    # a ticket of the batch may still be on its way outside the chord (run again after a
    # conflict, or sent again by the supervisor): the batch ends when its tickets have,
    # and the supervisor finishes it then
    tickets = rt.store.batch(run_id, index).get("tickets", [])
    records = rt.store.tickets(run_id, tickets)
    if any(records[t].get("state") not in FINAL_PHASES for t in tickets):
        rt.store.record_batch(run_id, index, barrier=time.time())
        log.warning("run %s: batch %d's barrier ran before its tickets ended", run_id, index + 1)
        return False
    if not rt.store.claim_batch_done(run_id, index):
        return False
    rt.store.record_batch(run_id, index, ended=time.time())
    advance(app, rt, run_id, index + 1)
    return True
