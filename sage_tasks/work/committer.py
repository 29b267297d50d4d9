"""The commit queue's work: turn a ticket's outcome into exactly one commit.

Under the repository's Redis lock, :class:`~sage_tasks.gitops.CommitTarget`
applies the patch with a 3-way merge into a temporary index and moves the
branch with a compare-and-swap; a conflict commits only the index change
that marks the ticket DEFERRED. The lock keeps writers apart; the CAS and the
trailer check make a lost lock or a second delivery harmless.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any

from sage_tasks.core.index import State
from sage_tasks.errors import PatchRejected, SageError
from sage_tasks.gitops import ChainItem, CommitResult, CommitTarget, prepare_branch
from sage_tasks.model.outcome import MalformedOutcome, Outcome, OutcomeKind
from sage_tasks.store import keys, liveness
from sage_tasks.store.keys import check_ids
from sage_tasks.store.lock import CommitLock
from sage_tasks.store.runstate import FINAL_PHASES, Phase, RunInfo, RunStatus
from sage_tasks.work import groupcommit
from sage_tasks.work.groupcommit import Planned
from sage_tasks.work.runtime import Runtime

log = logging.getLogger(__name__)

#: how long the single commit slot waits for the lock before retrying later
LOCK_WAIT_S = 2.0


#: ``commit_ticket``'s state for a conflicting ticket that runs again (``--conflict-retries``)
RERUN = "RERUN"


def committed(ticket_id: str, state: str) -> dict[str, Any]:
    """``commit_ticket``'s result: deterministic, so a duplicate adds nothing to the chord."""
    return {"ticket": ticket_id, "state": state}


#: how much of a failed command's output a DEFERRED reason keeps
REASON_OUTPUT_CHARS = 1500


def output_note(result: Outcome) -> str:
    """``; output ends (last N of M bytes): ...`` for a failed command's output tail."""
    output = (result.output or "").strip()
    if not output:
        return ""
    shown = output[-REASON_OUTPUT_CHARS:]
    if len(shown) < len(output) and "\n" in shown:
        shown = shown.split("\n", 1)[1]  # start at a line
    total = result.output_bytes or 0
    size = len(shown.encode())
    if total > size:
        return f"; output ends (last {size} of {total} bytes): {shown}"
    return f"; output ends: {shown}"


def commit_ticket(rt: Runtime, result: Any, run_id: str, ticket_id: str) -> dict[str, Any]:
    """Commit one ticket's outcome to the run's branch (at most once)."""
    check_ids(run_id, ticket_id)
    try:
        outcome: Outcome | None = Outcome.from_json(result)
    except MalformedOutcome:
        outcome = None
    digest = (outcome.patch or "") if outcome and outcome.kind == OutcomeKind.OK else ""
    info, record, stored_patch = rt.store.snapshot(run_id, ticket_id, digest)
    if info is None:
        return committed(ticket_id, "LOST")
    rt.check_serves(info.repo, f"ticket {ticket_id} of run {run_id}", tickets=(ticket_id,))
    if outcome is None or outcome.ticket != ticket_id:
        raise SageError(f"refused: malformed outcome for ticket {ticket_id}", tickets=(ticket_id,))
    settled = _settled(rt, run_id, record, outcome)
    if settled is not None:
        return committed(ticket_id, settled)
    planned = plan_commit(info, record, outcome, stored_patch, run_id, ticket_id)
    if planned is None:
        # a late copy of an outcome the ticket has since been re-run for
        return committed(ticket_id, "SUPERSEDED")
    target = CommitTarget(rt.repository, info.branch, info.index_path)
    lock = CommitLock(rt.redis, keys.commit_lock(info.repo), lease=rt.settings.lock_lease)
    lock.acquire(blocking_timeout=LOCK_WAIT_S)
    try:
        if liveness.is_cancelled(rt.store, run_id):
            # cancelled before this commit began: only a commit already under way finishes
            liveness.mark_cancelled(rt.store, run_id, ticket_id)
            return committed(ticket_id, Phase.CANCELLED.value)
        rt.inject("commit-locked")
        now = rt.store.ticket(run_id, ticket_id).get("state", "")
        if now in FINAL_PHASES:
            # written meanwhile, in another task's chain
            return committed(ticket_id, now)
        others = groupcommit.gather(rt, info, run_id, ticket_id, plan_commit)
        if others:
            return _commit_group(rt, target, run_id, planned, others)
        return _commit_one(rt, target, run_id, planned)
    finally:
        lock.release()


def _settled(rt: Runtime, run_id: str, record: dict[str, str], outcome: Outcome) -> str | None:
    """The ticket's state when its outcome commits nothing (None: it asks for a commit).

    A final ticket stays as it is; ``done``, ``lost`` and a void outcome
    (stopped, or of an attempt since taken over) write nothing; ``blocked``
    is recorded without a commit.
    """
    if record.get("state") in FINAL_PHASES:
        return record["state"]
    if outcome.kind == OutcomeKind.DONE:
        return outcome.state or ""
    if outcome.kind == OutcomeKind.LOST:
        return "LOST"
    void = liveness.void_outcome(outcome, record)
    if void:
        return void
    if outcome.kind == OutcomeKind.BLOCKED:
        reason = outcome.reason or ""
        rt.store.finish_ticket(run_id, outcome.ticket, Phase.BLOCKED, reason=reason)
        return Phase.BLOCKED.value
    return None


def _commit_one(rt: Runtime, target: CommitTarget, run_id: str, planned: Planned) -> dict[str, Any]:
    """Commit one ticket's outcome alone (under the lock); its task result."""
    item = planned.item
    ticket_id = item.ticket_id
    hook = lambda: rt.inject("before-update-ref")  # noqa: E731
    try:
        res = target.commit(
            ticket_id,
            item.title,
            run_id,
            item.patch,
            item.state,
            item.reason,
            before_update_ref=hook,
            rerun_on_conflict=item.rerun_on_conflict,
        )
        if res.rerun:
            rt.store.rerun_ticket(run_id, ticket_id, res.conflicts)
            log.info("ticket %s conflicts in %s: run again", ticket_id, res.conflicts)
            return committed(ticket_id, RERUN)
    except PatchRejected as exc:
        # an unsafe or oversize patch is the ticket's failure, not the queue's
        res = target.commit(
            ticket_id, item.title, run_id, None, State.DEFERRED, str(exc), before_update_ref=hook
        )
        res = replace(res, reason=str(exc))
    # the branch has moved, the run's record does not know it yet
    rt.inject("after-update-ref")
    final = record_commit(rt, target, run_id, planned, res)
    return committed(ticket_id, final.value)


def _commit_group(
    rt: Runtime, target: CommitTarget, run_id: str, own: Planned, others: list[Planned]
) -> dict[str, Any]:
    """Commit ``own`` and ``others`` as one chain (under the lock); ``own``'s task result."""
    members = [own, *others]
    results = groupcommit.commit_chain(rt, target, members)
    mine = committed(own.item.ticket_id, "")
    for planned, res in zip(members, results, strict=True):
        ticket_id = planned.item.ticket_id
        if res.rerun:
            if planned is own:
                rt.store.rerun_ticket(run_id, ticket_id, res.conflicts)
                log.info("ticket %s conflicts in %s: run again", ticket_id, res.conflicts)
                mine = committed(ticket_id, RERUN)
            continue  # another's conflict: its own task runs it again
        final = record_commit(rt, target, run_id, planned, res)
        if planned is own:
            mine = committed(ticket_id, final.value)
    log.info("group commit of %d tickets of run %s", len(members), run_id)
    return mine


def ticket_title(record: dict[str, str]) -> str:
    """The ticket's title: its definition's, as submitted (the ticket's hash keeps no long
    value); the record's own ``title`` for a run stored before definitions carried it."""
    try:
        definition = json.loads(record.get("ticket") or "{}")
    except ValueError:
        definition = None
    title = definition.get("title") if isinstance(definition, dict) else None
    return title if isinstance(title, str) else record.get("title", "")


def plan_commit(
    info: RunInfo,
    record: dict[str, str],
    result: Outcome,
    stored_patch: bytes | None,
    run_id: str,
    ticket_id: str,
) -> Planned | None:
    """What an ``ok`` or ``failed`` outcome commits; None for a superseded outcome."""
    patch: bytes | None = None
    reason: str | None = None
    if result.kind == OutcomeKind.OK:
        state = State.COMPLETED
        if result.patch:
            patch = stored_patch
            if patch is None:
                state, reason = State.DEFERRED, "its patch is gone from Redis"
    else:
        state = State.DEFERRED
        reason = result.reason or "failed"
        reason = f"{reason}{output_note(result)}"
    reruns = int(record.get("conflict_reruns") or 0)
    if (result.rerun or 0) < reruns:
        return None
    may_rerun = result.kind == OutcomeKind.OK and reruns < int(info.options.conflict_retries)
    title = ticket_title(record)
    return Planned(ChainItem(ticket_id, title, run_id, patch, state, reason, may_rerun), reruns)


def record_commit(
    rt: Runtime, target: CommitTarget, run_id: str, planned: Planned, res: CommitResult
) -> Phase:
    """Record a committed ticket's final state in the run (after the branch moved)."""
    ticket_id = planned.item.ticket_id
    final = Phase(res.state.value if isinstance(res.state, State) else str(res.state))
    final_reason = res.reason or planned.item.reason or ""
    if res.conflicts:
        final_reason = "merge conflict in: " + ", ".join(res.conflicts)
        if planned.reruns:
            reruns = planned.reruns
            final_reason += f" (after {reruns} re-run{'s' if reruns != 1 else ''})"
    # a repeat names the ticket's old commit: the branch may be well past it
    tip = target.repo.head(target.ref) if res.already else None
    # the run's head under the lock, so a slower writer never sets it back
    rt.store.finish_ticket(
        run_id,
        ticket_id,
        final,
        reason=final_reason,
        commit=res.sha,
        run_fields={"head": tip[0] if tip else res.sha},
    )
    log.info(
        "ticket %s %s at %s%s",
        ticket_id,
        final.value,
        res.sha[:12],
        " (already committed)" if res.already else "",
    )
    return final


def prepare_run(rt: Runtime, run_id: str) -> bool:
    """Create (or resume) the run's branch; True when the run may send its first batch."""
    store = rt.store
    info = store.get(run_id)
    if info is None or info.status != RunStatus.SUBMITTED:
        return False
    rt.check_serves(info.repo, f"run {run_id}")
    assert rt.repo_path is not None
    try:
        branch = prepare_branch(
            rt.repo_path, info.branch, info.base, allow_main=info.options.allow_main
        )
    except SageError as exc:
        store.finish(run_id, info.repo, status=RunStatus.FAILED, error=str(exc))
        return False
    if not store.claim_batch_done(run_id, -1):
        return False

    store.update(
        run_id,
        status=RunStatus.RUNNING.value,
        started=time.time(),
        base_sha=branch.head_sha,
        head=branch.head_sha,
    )
    return True
