"""Every Redis key sage-tasks writes, named in one place.

All keys live under the ``sage:`` prefix, so they never collide with Celery's
own (``celery-task-meta-*``, ``_kombu.*``, queue lists).
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from sage_tasks.core.index import is_valid_ticket_id
from sage_tasks.errors import SageError

PREFIX = "sage"

#: sorted set of run ids, scored by submission time (the latest run is the last)
RUNS = f"{PREFIX}:runs"

#: run ids are ours (hex); anything else on the wire is refused
RUN_ID_RE = re.compile(r"[A-Za-z0-9]{1,64}")


def check_ids(run_id: object, ticket_id: object) -> None:
    """Ids from a message are never trusted: they go into key names and paths."""
    if not isinstance(run_id, str) or RUN_ID_RE.fullmatch(run_id) is None:
        raise SageError(f"refused: invalid run id {run_id!r}")
    if not is_valid_ticket_id(ticket_id):
        raise SageError(f"refused: invalid ticket id {ticket_id!r}")


def repo_key(repo_identity: str) -> str:
    """A short stable token for a repository identity (path or URL)."""
    return hashlib.sha256(repo_identity.encode()).hexdigest()[:16]


def run(run_id: str) -> str:
    """Hash: the run's record (repository, branch, plan, status, times)."""
    return f"{PREFIX}:run:{run_id}"


def ticket(run_id: str, ticket_id: str) -> str:
    """Hash: one ticket's record in a run (state, attempts, host, times, reason, commit).

    Only short values: Redis keeps a hash whose values are all at most 64 bytes
    (``hash-max-listpack-value``) as one compact listpack, and turns it into a
    hash table, about twice the memory, at the first longer one. A ticket's two
    long values live in the run's :func:`definitions` and :func:`results`.
    """
    return f"{PREFIX}:run:{run_id}:t:{ticket_id}"


def definitions(run_id: str) -> str:
    """Hash: ticket id -> the ticket's JSON object as submitted (what its worker runs)."""
    return f"{PREFIX}:run:{run_id}:definitions"


def results(run_id: str) -> str:
    """Hash: ticket id -> the outcome of its command (JSON), from when it ran."""
    return f"{PREFIX}:run:{run_id}:results"


def final(run_id: str) -> str:
    """Hash: ticket id -> final state, for every ticket the run has finished."""
    return f"{PREFIX}:run:{run_id}:final"


def counts(run_id: str) -> str:
    """Hash: final state -> how many tickets of the run ended in it (kept with ``final``)."""
    return f"{PREFIX}:run:{run_id}:counts"


def running(run_id: str) -> str:
    """Set: ids of the tickets whose command runs right now."""
    return f"{PREFIX}:run:{run_id}:running"


def waiting(run_id: str) -> str:
    """Set: ids of the tickets whose outcome waits for the commit queue (group commit)."""
    return f"{PREFIX}:run:{run_id}:waiting"


def cancelled(run_id: str) -> str:
    """String set once when the run is cancelled: attempts and commits read it to stop."""
    return f"{PREFIX}:run:{run_id}:cancelled"


def batch(run_id: str, index: int) -> str:
    """Hash: one batch's record (chord group id, tickets, sent and done times)."""
    return f"{PREFIX}:run:{run_id}:batch:{index}"


def batch_done(run_id: str, index: int) -> str:
    """String set once (SET NX) by whoever finishes a batch first."""
    return f"{PREFIX}:run:{run_id}:batch:{index}:done"


def patch(run_id: str, digest: str) -> str:
    """String: a ticket's patch bytes, addressed by their SHA-256."""
    return f"{PREFIX}:run:{run_id}:patch:{digest}"


def active_runs(repo_identity: str) -> str:
    """Set: the unfinished runs of one repository, watched by its supervisor."""
    return f"{PREFIX}:repo:{repo_key(repo_identity)}:active"


def commit_lock(repo_identity: str) -> str:
    """The commit lock of one repository."""
    return f"{PREFIX}:repo:{repo_key(repo_identity)}:lock"


def run_keys_pattern(run_id: str) -> str:
    """A SCAN pattern matching every key of one run."""
    return f"{PREFIX}:run:{run_id}*"


def claim(run_id: str, name: str) -> str:
    """String set once (SET NX): whoever sets it does the one-time step ``name``."""
    return f"{PREFIX}:run:{run_id}:claim:{name}"


# -- the eager schedule: readiness kept in Redis, changed only by its Lua scripts --


class EagerKeys(NamedTuple):
    """The keys of one run's eager schedule (see :mod:`sage_tasks.store.readiness`)."""

    #: string set once, by the script that lays the others out
    init: str
    #: hash: ticket id -> dependencies not yet COMPLETED
    pending: str
    #: hash: ticket id -> JSON list of the tickets to run that depend on it
    dependents: str
    #: hash: ticket id -> JSON list of the tickets whose ``paths`` overlap its own
    overlaps: str
    #: sorted set: tickets whose dependencies are all COMPLETED, scored by their rank
    ready: str
    #: hash: ticket id -> its place in priority-then-id order
    rank: str
    #: set: tickets claimed for dispatch whose outcome is not yet released
    inflight: str
    #: set: claimed tickets whose chain the broker does not have yet
    unsent: str
    #: set: tickets whose final outcome has been applied to their dependents
    released: str


def eager(run_id: str) -> EagerKeys:
    """The eager-schedule keys of one run (all under the run's prefix, so they expire with it)."""
    base = f"{PREFIX}:run:{run_id}:eager"
    return EagerKeys(*(f"{base}:{name}" for name in EagerKeys._fields))


def sending(run_id: str, ticket_id: str) -> str:
    """String (SET NX EX): a short lease on sending one claimed ticket."""
    return f"{PREFIX}:run:{run_id}:eager:sending:{ticket_id}"


def fault_once(point: str, token: str) -> str:
    """String (SET NX): a test's fault at ``point`` has already struck for ``token``."""
    return f"{PREFIX}:fault:{point}:{token}"
