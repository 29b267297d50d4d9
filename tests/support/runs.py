"""Building ticket indexes and reading what a run left on its branch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sage_tasks.store.runstate import Phase, RunInfo, RunStatus, RunStore
from tests.support.gitrepo import INDEX, git

__all__ = [
    "INDEX",
    "git",
    "index_at",
    "run_info",
    "run_with_ticket",
    "states",
    "ticket",
    "ticket_log",
    "tickets_at",
    "writes",
]


def run_info(run_id: str, **fields: Any) -> RunInfo:
    """A run record for tests that write one directly; ``fields`` override the defaults."""
    values: dict[str, Any] = {
        "run_id": run_id,
        "repo": "/nowhere",
        "repo_url": "/nowhere",
        "branch": f"sage/run-{run_id}",
        "base": "main",
        "index_path": INDEX,
        "commit_queue": "commit",
        "executor": None,
        "ticket_timeout": 600.0,
        "batches": 1,
        "tickets": 0,
        "to_run": 0,
        "created": 0.0,
        **fields,
    }
    return RunInfo(**values)


def run_with_ticket(client: Any, *, ttl: int = 3600, **fields: str) -> RunStore:
    """A store on ``client`` holding the RUNNING run ``run1`` of one QUEUED ticket ``T``
    (``fields``: more of the ticket's first record)."""
    store = RunStore(client, ttl=ttl)
    info = run_info("run1", status=RunStatus.RUNNING.value)
    store.create(info, '{"batches": [["T"]]}', {"T": {"state": Phase.QUEUED.value, **fields}})
    return store


def ticket(tid: str, run: str, deps: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """One ticket of an index, UNPROCESSED at P2 unless ``extra`` says otherwise."""
    return {
        "id": tid,
        "title": f"ticket {tid}",
        "state": "UNPROCESSED",
        "priority": "P2",
        "dependencies": deps or [],
        "run": run,
        **extra,
    }


def writes(tid: str, needs: list[str] | None = None) -> str:
    """A command that fails unless each dependency's file is present, then writes its own."""
    checks = "".join(f"test -f out/{d}.txt && " for d in (needs or []))
    return f"{checks}mkdir -p out && echo {tid} > out/{tid}.txt"


def ticket_log(repo: Path, branch: str) -> list[str]:
    """Sage-Ticket trailers of the branch's commits, oldest first."""
    out = git(
        repo, "log", "--reverse", "--format=%(trailers:key=Sage-Ticket,valueonly)%x00", branch
    )
    return [t.strip() for t in out.split("\0") if t.strip()]


def index_at(repo: Path, ref: str) -> dict[str, Any]:
    """The ticket index as the commit ``ref`` holds it."""
    data: dict[str, Any] = json.loads(git(repo, "show", f"{ref}:{INDEX}"))
    return data


def states(repo: Path, ref: str) -> dict[str, str]:
    """Ticket id -> state in the index at ``ref``."""
    return {t["id"]: t["state"] for t in index_at(repo, ref)["tickets"]}


def tickets_at(repo: Path, ref: str) -> dict[str, dict[str, Any]]:
    """Ticket id -> the whole ticket, as the index at ``ref`` holds it."""
    return {t["id"]: t for t in index_at(repo, ref)["tickets"]}
