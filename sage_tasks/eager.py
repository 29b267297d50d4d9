"""``--schedule eager``: each ticket is sent the moment its dependencies are committed.

No batch barriers: after the commit queue finishes a ticket it sends every
dependent whose dependencies are now all COMPLETED, and marks BLOCKED every
dependent of a ticket that ended DEFERRED or BLOCKED. A claim per ticket makes
sending idempotent, so a duplicate commit or the supervisor's second look
never sends a ticket twice.
"""

from __future__ import annotations

import json
import logging

from celery import Celery

from sage_tasks.producer import ticket_chain
from sage_tasks.runstate import FINAL_PHASES, Phase, RunInfo, RunStatus
from sage_tasks.runtime import Runtime

log = logging.getLogger(__name__)

SCHEDULE_EAGER = "eager"


def is_eager(info: RunInfo) -> bool:
    return info.extra.get("schedule") == SCHEDULE_EAGER


def _plan(rt: Runtime, run_id: str) -> tuple[list[str], dict[str, list[str]]]:
    raw = rt.store.plan_json(run_id)
    if raw is None:
        return [], {}
    plan = json.loads(raw)
    order = [t for batch in plan["batches"] for t in batch]
    deps = {t: list(plan.get("deps", {}).get(t, [])) for t in order}
    return order, deps


def _send(app: Celery, rt: Runtime, info: RunInfo, ticket_id: str) -> None:
    if not rt.store.claim(info.run_id, f"sent:{ticket_id}"):
        return
    rt.store.mark_queued(info.run_id, [ticket_id], -1)
    ticket_chain(app, info.run_id, ticket_id, info.commit_queue).apply_async()


def start(app: Celery, rt: Runtime, run_id: str) -> None:
    """Send every ticket with no dependency still to run."""
    info = rt.store.get(run_id)
    if info is None:
        return
    order, deps = _plan(rt, run_id)
    rt.store.update(run_id, status=RunStatus.RUNNING.value)
    roots = [t for t in order if not deps[t]]
    for tid in roots:
        _send(app, rt, info, tid)
    step(app, rt, run_id)


def step(app: Celery, rt: Runtime, run_id: str) -> None:
    """Send what has become ready, block what can no longer run, end the run when all is final.

    Called after every commit (cheap for the run sizes the commit queue can
    serve) and by the supervisor.
    """
    store = rt.store
    info = store.get(run_id)
    if info is None or info.status != RunStatus.RUNNING:
        return
    order, deps = _plan(rt, run_id)
    finals = store.finals(run_id)
    changed = True
    while changed:  # blocking passes down chains of dependents
        changed = False
        for tid in order:
            if tid in finals:
                continue
            bad = next(
                (d for d in deps[tid] if finals.get(d) in (Phase.DEFERRED, Phase.BLOCKED)), None
            )
            if bad is not None:
                reason = f"dependency {bad} is {finals[bad]}"
                store.finish_ticket(run_id, tid, Phase.BLOCKED, reason=reason)
                finals[tid] = Phase.BLOCKED.value
                changed = True
    for tid in order:
        if tid not in finals and all(finals.get(d) == Phase.COMPLETED for d in deps[tid]):
            _send(app, rt, info, tid)
    if all(finals.get(t) in FINAL_PHASES for t in order) and store.claim(run_id, "finished"):
        store.finish(run_id, info.repo, status=RunStatus.FINISHED)
        log.info("run %s finished", run_id)
