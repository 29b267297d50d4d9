"""Ticket events in the workers' logs: one searchable line per event.

Every change of a ticket's state in a run's record (queued, running, ran,
COMPLETED, DEFERRED, BLOCKED) is also written to the log of the process that
made it, as one line of ``key=value`` pairs (logfmt)::

    sage.ticket run=3f2a9c1be07d ticket=AUTH-001 host=tickets@w1 state=RAN
        duration_s=4.210 slot=tickets@w1#2

(one line in the log), so ``grep 'sage.ticket run=3f2a9c1be07d'`` over a
fleet's logs follows a run, and ``grep 'ticket=AUTH-001 '`` one ticket.
``host`` is the node name of the worker that logged the line (``--hostname``),
``slot`` the worker slot (node name and pool process index) that ran the
ticket's command.

This module also knows where it runs: the worker's node name (handed to it
by :mod:`sage_tasks.app.monitoring` when the worker starts) and the pool process
index of a prefork child.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import Any

#: the logger of ticket events (a child of nothing else in sage-tasks, so it can be routed alone)
log = logging.getLogger("sage.ticket")

#: the first word of every event line
TAG = "sage.ticket"
#: a reason in a line is cut to this many characters (the run record keeps it whole)
REASON_CHARS = 200
_BARE = re.compile(r"[A-Za-z0-9._@:/#+-]+")

_node = ""


def set_node(name: str) -> None:
    """Remember this worker's node name (pool children inherit it)."""
    global _node
    _node = name


def node() -> str:
    """This worker's node name, or the machine's host name outside a worker."""
    return _node or socket.gethostname()


def process_index() -> int:
    """The pool process index of this process (1, 2, ... in a prefork child; 0 elsewhere).

    Celery's ``%i`` in log file names is the same number: billiard gives each
    pool process a stable index, and a replacement process takes over the
    index of the one it replaces.
    """
    from billiard.process import current_process

    index = getattr(current_process(), "index", None)
    return index + 1 if isinstance(index, int) else 0


def slot(host: str | None = None) -> str:
    """The worker slot this process is: ``<node name>#<pool process index>``."""
    return f"{host or node()}#{process_index()}"


def _value(value: object) -> str:
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f\x7f]", " ", text) + '"'


def format_event(run_id: str, ticket_id: str, state: str, **fields: Any) -> str:
    """The log line of one event; fields that are None or empty are left out."""
    pairs: dict[str, Any] = {"run": run_id, "ticket": ticket_id, "host": node(), "state": state}
    pairs.update(fields)
    if pairs.get("host") in (None, ""):
        pairs["host"] = node()
    duration = pairs.get("duration_s")
    if isinstance(duration, int | float):
        pairs["duration_s"] = f"{duration:.3f}"
    reason = pairs.get("reason")
    if isinstance(reason, str) and reason:
        first = reason.strip().splitlines()[0] if reason.strip() else ""
        pairs["reason"] = first[:REASON_CHARS]
    body = " ".join(f"{k}={_value(v)}" for k, v in pairs.items() if v is not None and v != "")
    return f"{TAG} {body}"


def ticket_event(run_id: str, ticket_id: str, state: str, **fields: Any) -> None:
    """Log one ticket event; never raises (a log line must not fail a ticket)."""
    try:
        if log.isEnabledFor(logging.INFO):
            log.info("%s", format_event(run_id, ticket_id, state, **fields))
    except Exception:  # pragma: no cover - logging must never break the caller
        pass
