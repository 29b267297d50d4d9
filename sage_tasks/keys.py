"""Every Redis key sage-tasks writes, named in one place.

All keys live under the ``sage:`` prefix, so they never collide with Celery's
own (``celery-task-meta-*``, ``_kombu.*``, queue lists).
"""

from __future__ import annotations

import hashlib

PREFIX = "sage"

#: sorted set of run ids, scored by submission time (the latest run is the last)
RUNS = f"{PREFIX}:runs"


def repo_key(repo_identity: str) -> str:
    """A short stable token for a repository identity (path or URL)."""
    return hashlib.sha256(repo_identity.encode()).hexdigest()[:16]


def run(run_id: str) -> str:
    """Hash: the run's record (repository, branch, plan, status, times)."""
    return f"{PREFIX}:run:{run_id}"


def ticket(run_id: str, ticket_id: str) -> str:
    """Hash: one ticket's record in a run (state, attempts, host, times, reason, commit)."""
    return f"{PREFIX}:run:{run_id}:t:{ticket_id}"


def final(run_id: str) -> str:
    """Hash: ticket id -> final state, for every ticket the run has finished."""
    return f"{PREFIX}:run:{run_id}:final"


def running(run_id: str) -> str:
    """Set: ids of the tickets whose command runs right now."""
    return f"{PREFIX}:run:{run_id}:running"


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
