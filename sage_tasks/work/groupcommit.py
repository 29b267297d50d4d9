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
from collections.abc import Callable
from dataclasses import dataclass

from sage_tasks.gitops import ChainItem, CommitResult, CommitTarget
from sage_tasks.model.outcome import Outcome, OutcomeKind
from sage_tasks.store.runstate import Phase, RunInfo
from sage_tasks.work.runtime import Runtime

#: at most this many tickets in one chain (a long chain delays its first ticket's record)
MAX_CHAIN = 32


@dataclass(frozen=True)
class Planned:
    """A ticket's outcome as the commit it asks for, and its conflict re-runs so far."""

    item: ChainItem
    reruns: int


#: turns a ticket's run record, outcome and patch into what it commits (None: superseded)
Plan = Callable[[RunInfo, dict[str, str], Outcome, "bytes | None", str, str], "Planned | None"]


def gather(rt: Runtime, info: RunInfo, run_id: str, own: str, plan: Plan) -> list[Planned]:
    """The other tickets of the run whose outcome waits and can be committed now."""
    found: list[Planned] = []
    for ticket_id in rt.store.waiting(run_id):
        if ticket_id == own:
            continue
        planned = _waiting(rt, info, run_id, ticket_id, plan)
        if planned is not None:
            found.append(planned)
            if len(found) >= MAX_CHAIN - 1:
                break
    return found


def _waiting(rt: Runtime, info: RunInfo, run_id: str, ticket_id: str, plan: Plan) -> Planned | None:
    """What a waiting ticket's recorded outcome commits; None when it is not one to take."""
    record = rt.store.record(run_id, ticket_id)
    if record.get("state") != Phase.RAN.value or not record.get("result"):
        return None
    try:
        result = Outcome.from_json(json.loads(record["result"]))
    except ValueError:  # not JSON, or not an outcome
        return None
    if result.ticket != ticket_id:
        return None
    if result.kind not in (OutcomeKind.OK, OutcomeKind.FAILED):
        return None  # done, lost or blocked: its own task records those
    digest = (result.patch or "") if result.kind == OutcomeKind.OK else ""
    patch = rt.store.snapshot(run_id, ticket_id, digest)[2] if digest else None
    return plan(info, record, result, patch, run_id, ticket_id)


def commit_chain(rt: Runtime, target: CommitTarget, members: list[Planned]) -> list[CommitResult]:
    """Write ``members`` as one chain and move the branch once (under the lock)."""
    hook = lambda: rt.inject("before-update-ref")  # noqa: E731
    results = target.commit_chain([m.item for m in members], before_update_ref=hook)
    # the branch has moved, the run's record does not know it yet
    rt.inject("after-update-ref")
    return results
