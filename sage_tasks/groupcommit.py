"""Group commit: outcomes waiting for the same branch are written as one chain of commits.

When a commit task holds the repository's lock and other tickets of its run
have an outcome waiting (their command ran, their commit task is still in
the queue), it writes them all: one commit per ticket, each with its
trailers and index change, one on the other, and moves the branch once with
one compare-and-swap. Bors and Zuul batch merges the same way.

Waiting tickets never depend on each other (a ticket runs only once its
dependencies are committed), so the chain's order (the task's own ticket
first, then by id) is a dependency order. Exactly once holds as for a single
commit: nothing is published before the compare-and-swap; after it, each
ticket's record is finished, and a ticket's own commit task, arriving later,
finds it final (or, after a crash before its record was written, finds it in
the ticket index and only records it).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from sage_tasks.runstate import Phase, RunInfo

if TYPE_CHECKING:
    from sage_tasks.committer import Planned
    from sage_tasks.gitops import CommitTarget
    from sage_tasks.runtime import Runtime

log = logging.getLogger(__name__)

#: at most this many tickets in one chain (a long chain delays its first ticket's record)
MAX_CHAIN = 32


def gather(rt: Runtime, info: RunInfo, run_id: str, own: str) -> list[Planned]:
    """The other tickets of the run whose outcome waits and can be committed now."""
    found: list[Planned] = []
    for ticket_id in rt.store.waiting(run_id):
        if ticket_id == own:
            continue
        planned = _waiting(rt, info, run_id, ticket_id)
        if planned is not None:
            found.append(planned)
            if len(found) >= MAX_CHAIN - 1:
                break
    return found


def _waiting(rt: Runtime, info: RunInfo, run_id: str, ticket_id: str) -> Planned | None:
    """What a waiting ticket's recorded outcome commits; None when it is not one to take."""
    from sage_tasks.committer import plan_commit

    record = rt.store.ticket(run_id, ticket_id)
    if record.get("state") != Phase.RAN.value or not record.get("result"):
        return None
    try:
        result: Any = json.loads(record["result"])
    except ValueError:
        return None
    if not isinstance(result, dict) or result.get("ticket") != ticket_id:
        return None
    if result.get("outcome") not in ("ok", "failed"):
        return None  # done, lost or blocked: its own task records those
    digest = str(result.get("patch") or "") if result.get("outcome") == "ok" else ""
    _, _, patch = rt.store.snapshot(run_id, ticket_id, digest) if digest else (None, None, None)
    return plan_commit(info, record, result, patch, run_id, ticket_id)


def commit_group(
    rt: Runtime, target: CommitTarget, run_id: str, own: Planned, others: list[Planned]
) -> dict[str, Any]:
    """Commit ``own`` and ``others`` as one chain (under the lock); ``own``'s task result."""
    from sage_tasks.committer import RERUN, committed, record_commit

    hook = lambda: rt.inject("before-update-ref")  # noqa: E731
    members = [own, *others]
    results = target.commit_chain([m.item for m in members], before_update_ref=hook)
    rt.inject("after-update-ref")
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
