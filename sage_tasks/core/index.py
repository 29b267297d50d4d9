"""The ticket index (``.sage/tickets/index.json``): load, validate shape, edit, save.

The document keeps the parsed JSON object as it was read, so every unknown
ticket field and top-level key survives a load-save round trip with its key
order; typed :class:`Ticket` views are built over it for the graph.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sage_tasks.errors import IndexValidationError, Problem

DEFAULT_INDEX_PATH = ".sage/tickets/index.json"
TICKET_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class State(StrEnum):
    """A ticket's state as the index records it."""

    UNPROCESSED = "UNPROCESSED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    DEFERRED = "DEFERRED"


class Priority(StrEnum):
    """P0 is the most urgent."""

    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


class Ticket(BaseModel):
    """A typed view of one ticket; unknown fields are kept in ``model_extra``."""

    model_config = ConfigDict(extra="allow")

    id: str
    title: str = ""
    state: State = State.UNPROCESSED
    priority: Priority = Priority.P2
    dependencies: list[str] = Field(default_factory=list)
    run: str | None = None
    timeout: float | None = None
    retries: int = 0
    estimate: str | float | int | None = None


def is_valid_ticket_id(value: object) -> bool:
    """True when ``value`` is a string that may name a ticket (also used on the wire)."""
    return isinstance(value, str) and TICKET_ID_RE.match(value) is not None


class IndexDocument:
    """A loaded index: the raw JSON object plus typed tickets over it."""

    def __init__(self, raw: dict[str, Any], tickets: list[Ticket], source: str = DEFAULT_INDEX_PATH):
        self.raw = raw
        self.tickets = tickets
        self.source = source
        self._by_id = {t.id: i for i, t in enumerate(tickets)}

    # -- reading -------------------------------------------------------------

    @classmethod
    def loads(cls, data: bytes | str, source: str = DEFAULT_INDEX_PATH) -> IndexDocument:
        """Parse and shape-check an index; raises :class:`IndexValidationError` listing all problems."""
        try:
            raw = json.loads(data)
        except json.JSONDecodeError as exc:
            raise IndexValidationError(
                [Problem(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")],
                path=source,
            ) from None
        except UnicodeDecodeError as exc:
            raise IndexValidationError([Problem(f"not UTF-8: {exc.reason}")], path=source) from None
        if not isinstance(raw, dict):
            raise IndexValidationError([Problem("top level is not a JSON object")], path=source)
        items = raw.get("tickets")
        if not isinstance(items, list):
            raise IndexValidationError([Problem("top level has no 'tickets' list")], path=source)
        problems: list[Problem] = []
        tickets: list[Ticket] = []
        for pos, item in enumerate(items):
            if not isinstance(item, dict):
                problems.append(Problem(f"tickets[{pos}] is not an object"))
                continue
            try:
                tickets.append(Ticket.model_validate(item))
            except Exception as exc:  # pydantic.ValidationError
                tid = item.get("id")
                name = tid if isinstance(tid, str) else f"tickets[{pos}]"
                problems.append(Problem(f"ticket {name}: {_first_error(exc)}", (name,)))
        if problems:
            raise IndexValidationError(problems, path=source)
        return cls(raw, tickets, source)

    def __iter__(self) -> Iterator[Ticket]:
        return iter(self.tickets)

    def __len__(self) -> int:
        return len(self.tickets)

    def get(self, ticket_id: str) -> Ticket | None:
        """The ticket with that id, or None."""
        pos = self._by_id.get(ticket_id)
        return None if pos is None else self.tickets[pos]

    def ticket_json(self, ticket_id: str) -> dict[str, Any]:
        """The ticket's raw JSON object, all fields as the index has them."""
        pos = self._by_id[ticket_id]
        item: dict[str, Any] = self.raw["tickets"][pos]
        return item

    # -- editing -------------------------------------------------------------

    def set_state(self, ticket_id: str, state: State, reason: str | None = None) -> None:
        """Set a ticket's state; a DEFERRED reason is stored, and removed otherwise."""
        pos = self._by_id[ticket_id]
        item = self.raw["tickets"][pos]
        item["state"] = state.value
        if state is State.DEFERRED and reason is not None:
            item["deferred_reason"] = reason
        else:
            item.pop("deferred_reason", None)
        self.tickets[pos].state = state

    # -- writing -------------------------------------------------------------

    def dumps(self) -> bytes:
        """The index as written to disk: 2-space indent, key order kept, trailing newline."""
        return (json.dumps(self.raw, indent=2, ensure_ascii=False) + "\n").encode()


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        errs = errors()
        if errs:
            e = errs[0]
            loc = ".".join(str(p) for p in e.get("loc", ()))
            return f"field '{loc}': {e.get('msg', 'invalid')}"
    return str(exc)


def load_index(path: Path | str) -> IndexDocument:
    """Read and shape-check the index at ``path``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise IndexValidationError([Problem(f"cannot read: {exc.strerror}")], path=str(p)) from None
    return IndexDocument.loads(data, source=str(p))


def save_index(doc: IndexDocument, path: Path | str) -> None:
    """Write the index atomically: temp file in the same folder, fsync, rename."""
    p = Path(path)
    data = doc.dumps()
    fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
