"""Building what tests feed sage-tasks and read back: tickets, indexes, run records (and a
store holding one), and what ``sage-submit`` answered."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from sage_tasks.store.runstate import Phase, RunInfo, RunStatus, RunStore
from tests.support.gitrepo import INDEX


def ticket(
    tid: str, run: str = "true", deps: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """One ticket as the index holds it: UNPROCESSED at P2, titled ``ticket <tid>``, unless
    ``extra`` says otherwise (``title``, ``state``, ``priority``, ``timeout``, ...)."""
    return {
        "id": tid,
        "title": f"ticket {tid}",
        "state": "UNPROCESSED",
        "priority": "P2",
        "dependencies": deps or [],
        "run": run,
        **extra,
    }


def index(*tickets: dict[str, Any]) -> dict[str, Any]:
    """A ticket index holding ``tickets``."""
    return {"version": "1.0", "tickets": list(tickets)}


def upstream_index(*tickets: dict[str, Any], **top: Any) -> dict[str, Any]:
    """An index as upstream Sage-Dev writes it today: schema 2.2.0, ticket-based workflow."""
    return {"version": "2.2.0", "workflow_mode": "TICKET_BASED", **top, "tickets": list(tickets)}


def story(tid: str, state: str = "UNPROCESSED", **fields: Any) -> dict[str, Any]:
    """A story as an upstream (schema 2.2.0) index holds it; ``fields`` add its links, its
    ``run`` and the rest."""
    return {"id": tid, "state": state, "type": "story", "title": f"Story {tid}", **fields}


def writes(tid: str, needs: list[str] | None = None) -> str:
    """A command that fails unless each dependency's file is present, then writes its own."""
    checks = "".join(f"test -f out/{d}.txt && " for d in (needs or []))
    return f"{checks}mkdir -p out && echo {tid} > out/{tid}.txt"


def run_info(run_id: str, **fields: Any) -> RunInfo:
    """A run's record for tests that write one directly; ``fields`` override the defaults
    (``to_run`` defaults to ``tickets``)."""
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
        "created": 0.0,
        **fields,
    }
    values.setdefault("to_run", values["tickets"])
    return RunInfo(**values)


def run_with_ticket(client: Any, *, ttl: int = 3600, **fields: str) -> RunStore:
    """A store on ``client`` holding the RUNNING run ``run1`` of one QUEUED ticket ``T``
    (``fields``: more of the ticket's first record)."""
    store = RunStore(client, ttl=ttl)
    info = run_info("run1", status=RunStatus.RUNNING.value)
    store.create(info, '{"batches": [["T"]]}', {"T": {"state": Phase.QUEUED.value, **fields}})
    return store


@dataclass
class Submitted:
    """What ``sage-submit`` did: exit code, parsed JSON (when any), and its output."""

    code: int
    data: dict[str, Any] | None
    stdout: str
    stderr: str

    @classmethod
    def parse(cls, code: int, stdout: str, stderr: str, *, json_out: bool) -> Submitted:
        """``json_out``: the command was asked for ``--json``; ``data`` is its output parsed
        (None when there is none, or it is not JSON)."""
        data = None
        if json_out and stdout.strip():
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(stdout)
        return cls(code, data, stdout, stderr)
