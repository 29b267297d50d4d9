"""``--schedule eager``: each ticket is sent the moment its last dependency is committed.

No batch barriers. The readiness of every ticket lives in Redis
(:class:`~sage_tasks.store.readiness.ReadySet`): after the commit queue finishes a
ticket, one Lua script drops its dependents' pending counts, moves those
reaching zero to the ready set and claims the most urgent ready tickets up to
``--parallel`` in flight (never two whose ``paths`` overlap). Each claimed
ticket is then sent under a lease, exactly once. The release is idempotent,
so a commit task delivered twice, or delivered again after its worker died
between the commit and the sends, dispatches each ticket once and loses
none; the supervisor runs the same step on its timer as a safety net.

A ticket that ends DEFERRED or BLOCKED marks its dependents BLOCKED, down the
whole chain, as level mode does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from celery import Celery

from sage_tasks.dispatch.producer import ticket_chain
from sage_tasks.store.readiness import ReadySet
from sage_tasks.store.runstate import FINAL_PHASES, Phase, RunInfo, RunStatus
from sage_tasks.work.runtime import Runtime

log = logging.getLogger(__name__)


def is_eager(info: RunInfo) -> bool:
    return info.options.eager


def _ready_set(rt: Runtime, run_id: str) -> ReadySet:
    return ReadySet(rt.redis, run_id, ttl=rt.settings.result_expires)


def in_flight(rt: Runtime, run_id: str) -> list[str]:
    """The tickets claimed for dispatch whose outcome is not released yet (sent, or about to be)."""
    return sorted(_ready_set(rt, run_id).inflight())


def _cap(info: RunInfo) -> int:
    return info.options.cap


def _has_overlaps(info: RunInfo) -> bool:
    return info.options.overlaps


def start(app: Celery, rt: Runtime, run_id: str) -> None:
    """Lay the run's readiness out in Redis (once) and send what can start."""
    info = rt.store.get(run_id)
    if info is None or info.status != RunStatus.RUNNING:
        return
    raw = rt.store.plan_json(run_id)
    if raw is None:
        return
    plan = json.loads(raw)
    order = [t for batch in plan["batches"] for t in batch]
    deps = {t: list(plan.get("deps", {}).get(t, [])) for t in order}
    records = rt.store.tickets(run_id, order)
    # the submitter's order (priority, then the work waiting on the ticket, then id)
    rank = {tid: int(records[tid].get("rank") or 0) for tid in order}
    overlaps = {t: list(v) for t, v in plan.get("overlaps", {}).items()}
    if _ready_set(rt, run_id).init(deps, rank, overlaps):
        log.info("run %s: eager schedule laid out (%d tickets)", run_id, len(order))
    pump(app, rt, run_id)


def release(app: Celery, rt: Runtime, run_id: str, ticket_id: str) -> None:
    """After ``ticket_id``'s commit task: apply its outcome, send what became ready.

    Runs again in full on a redelivered commit task, even when the commit was
    already on the branch: what the first delivery claimed but never sent is
    sent now.
    """
    info = rt.store.get(run_id)
    if info is None or info.status != RunStatus.RUNNING:
        return
    state = rt.store.ticket(run_id, ticket_id).get("state", "")
    if state not in FINAL_PHASES:
        return
    _apply(app, rt, info, [(ticket_id, state)])


def pump(app: Celery, rt: Runtime, run_id: str) -> None:
    """Release every final ticket not yet released, send every claimed one not yet sent.

    The supervisor's pass, and the end of :func:`start`; idempotent.
    """
    info = rt.store.get(run_id)
    if info is None or info.status != RunStatus.RUNNING:
        return
    ready = _ready_set(rt, run_id)
    if not ready.initialized():
        start(app, rt, run_id)
        return
    todo: list[tuple[str, str]] = []
    # released outcomes are final ones: equal counts mean nothing waits, and a pass
    # costs two counters instead of reading the whole run
    if rt.store.final_count(run_id) != ready.released_count():
        finals = rt.store.finals(run_id)
        done = ready.released()
        todo = [(t, s) for t, s in sorted(finals.items()) if t not in done]
    _apply(app, rt, info, todo or [("", "")])


def _apply(app: Celery, rt: Runtime, info: RunInfo, outcomes: Iterable[tuple[str, str]]) -> None:
    run_id = info.run_id
    ready = _ready_set(rt, run_id)
    unsent: list[str] = []
    for tid, state in outcomes:
        if state in (Phase.DEFERRED, Phase.BLOCKED):
            _block_dependents(rt, ready, run_id, tid, state)
        unsent = ready.release(tid, state, cap=_cap(info), paths=_has_overlaps(info))
    rt.inject_once("eager-claimed", run_id)
    for tid in unsent:
        _send(app, rt, ready, info, tid)
    _maybe_finish(rt, info)


def _block_dependents(rt: Runtime, ready: ReadySet, run_id: str, tid: str, state: str) -> None:
    """Every ticket that depends, directly or not, on ``tid`` becomes BLOCKED.

    A dependent found BLOCKED already (by this walk's earlier pass, cut short
    by a worker's death) is released again (releasing is idempotent) and
    walked through, so the rest of the walk is never lost.
    """
    store = rt.store
    todo = [(tid, state)]
    seen = {tid}
    while todo:
        cause, cause_state = todo.pop()
        dependents = [d for d in ready.dependents(cause) if d not in seen]
        if not dependents:
            continue
        seen.update(dependents)
        records = store.tickets(run_id, dependents)
        for dep in dependents:
            found = records[dep].get("state")
            if found in FINAL_PHASES and found != Phase.BLOCKED:
                continue
            if found != Phase.BLOCKED:
                store.finish_ticket(
                    run_id, dep, Phase.BLOCKED, reason=f"dependency {cause} is {cause_state}"
                )
            ready.release(dep, Phase.BLOCKED.value, cap=-1, paths=False)
            todo.append((dep, Phase.BLOCKED.value))


def _send(app: Celery, rt: Runtime, ready: ReadySet, info: RunInfo, tid: str) -> None:
    if not ready.lease(tid):
        return
    rt.store.mark_queued(info.run_id, [tid], -1)
    rt.store.count_dispatch(info.run_id, tid)
    ticket_chain(app, info.run_id, tid, info.commit_queue).apply_async()
    ready.mark_sent(tid)
    log.info("run %s: sent ticket %s", info.run_id, tid)


def _maybe_finish(rt: Runtime, info: RunInfo) -> None:
    store = rt.store
    planned = info.options.planned
    if store.final_count(info.run_id) >= planned and store.claim(info.run_id, "finished"):
        store.finish(info.run_id, info.repo, status=RunStatus.FINISHED)
        log.info("run %s finished", info.run_id)
