"""What monitors see of sage-tasks' tasks: Flower's task list and the workers' event lines.

Two Celery signal handlers, connected once per process by :func:`install`:

- when a worker starts, its node name is handed to :mod:`sage_tasks.store.events`,
  so every ticket event line names the worker (pool processes inherit it);
- when a task is published, the text Flower shows as its arguments
  (``argsrepr``) is made to name the run id and the ticket id whatever the
  outcome it carries: Celery cuts that text at 1024 characters, and a
  ``commit_ticket`` whose outcome holds a command's output would otherwise
  lose the run id and ticket id that come after it.
"""

from __future__ import annotations

from typing import Any

from celery.utils.saferepr import saferepr

from sage_tasks.dispatch.names import TASK_COMMIT
from sage_tasks.store import events

#: what Celery keeps of an ``argsrepr``
ARGSREPR_MAX = 1024
#: a string in a commit task's outcome is shown up to this many characters
VALUE_CHARS = 120


def install() -> None:
    """Connect the handlers (idempotent)."""
    from celery.signals import before_task_publish, celeryd_after_setup

    celeryd_after_setup.connect(_on_worker_setup, weak=False, dispatch_uid="sage-node-name")
    before_task_publish.connect(_on_publish, weak=False, dispatch_uid="sage-argsrepr")


def _on_worker_setup(sender: Any = None, **_: Any) -> None:
    if isinstance(sender, str) and sender:
        events.set_node(sender)


def _brief(value: object) -> object:
    if isinstance(value, str) and len(value) > VALUE_CHARS:
        return f"{value[: VALUE_CHARS - 1]}… ({len(value)} chars)"
    return value


def commit_argsrepr(args: Any) -> str | None:
    """``(outcome, run_id, ticket_id)`` with the outcome's long strings cut (None: not that)."""
    if not isinstance(args, list | tuple) or len(args) != 3:
        return None
    outcome, run_id, ticket_id = args
    if isinstance(outcome, dict):
        outcome = {k: _brief(v) for k, v in outcome.items()}
    tail = f", {run_id!r}, {ticket_id!r})"
    head = saferepr(outcome, ARGSREPR_MAX - len(tail) - 1)
    return f"({head[: ARGSREPR_MAX - len(tail) - 1]}{tail}"


def _on_publish(
    sender: str | None = None,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    if sender != TASK_COMMIT or headers is None:
        return
    try:
        args = body[0] if isinstance(body, list | tuple) and body else None
        shown = commit_argsrepr(args)
    except Exception:  # a label must never stop a task from being sent
        return
    if shown is not None:
        headers["argsrepr"] = shown
