"""The ticket index (``.sage/tickets/index.json``): load, validate shape, edit, save.

The document keeps the parsed JSON object as it was read, so every unknown
ticket field and top-level key survives a load-save round trip with its key
order. Beside it the document keeps the columnar
:class:`~sage_tasks.core.graph.TicketGraph` the planner works on; typed
:class:`Ticket` views are built lazily, only for the tickets asked for, since
building 100k pydantic models would cost more than planning them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sage_tasks.core.files import write_atomic
from sage_tasks.core.graph import STATE_CODES, TicketGraph, gc_paused
from sage_tasks.core.links import LinkSummary, summarize_links
from sage_tasks.core.validate import ID_RE, CheckedIndex, check_tickets, graph_problems
from sage_tasks.errors import IndexValidationError, Problem

DEFAULT_INDEX_PATH = ".sage/tickets/index.json"
#: the design's ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``, ending in ``\Z`` so no newline slips in
TICKET_ID_RE: re.Pattern[str] = ID_RE


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
    """A typed view of one ticket; unknown fields are kept in ``model_extra``.

    ``dependencies``, ``blocked_by`` and ``blocks`` are the ticket's own
    execution edges as written (a ``null`` list is an empty one); what the
    ticket waits for is their union with the tickets whose ``blocks`` name it,
    which only the whole index knows: :meth:`IndexDocument.waits_for`.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str
    title: str = ""
    state: State = State.UNPROCESSED
    priority: Priority = Priority.P2
    dependencies: list[str] = Field(default_factory=list)
    blocked_by: list[str] = Field(default_factory=list, alias="blockedBy")
    blocks: list[str] = Field(default_factory=list)
    run: str | None = None
    timeout: float | None = None
    retries: int = 0
    estimate: str | float | int | None = None
    #: globs of the files the ticket may touch; overlapping tickets never run at once
    paths: list[str] | None = None

    @field_validator("dependencies", "blocked_by", "blocks", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value


def is_valid_ticket_id(value: object) -> bool:
    """True when ``value`` is a string that may name a ticket (also used on the wire)."""
    return isinstance(value, str) and TICKET_ID_RE.match(value) is not None


class IndexDocument:
    """A loaded index: the raw JSON object, its ticket graph, and typed views over it.

    Edit it through :meth:`set_state` so the graph and the views stay in step
    with ``raw``.
    """

    def __init__(
        self,
        raw: dict[str, Any],
        tickets: list[Ticket] | None = None,
        source: str = DEFAULT_INDEX_PATH,
        *,
        checked: CheckedIndex | None = None,
    ):
        self.raw = raw
        self.source = source
        self._checked = checked
        self._views: list[Ticket | None] | None = list(tickets) if tickets is not None else None
        self._all_views = tickets is not None
        self._stdlib = False  # parsed by the stdlib fallback: write it back the same way

    # -- reading -------------------------------------------------------------

    @classmethod
    def loads(cls, data: bytes | str, source: str = DEFAULT_INDEX_PATH) -> IndexDocument:
        """Parse and shape-check an index; :class:`IndexValidationError` lists every problem."""
        with gc_paused():
            stdlib = False
            try:
                raw = orjson.loads(data)
            except orjson.JSONDecodeError:
                # orjson refuses a few things the stdlib reads (integers past 64 bits);
                # the stdlib also words real errors with the familiar line and column
                raw = _stdlib_loads(data, source)
                stdlib = True
            if not isinstance(raw, dict):
                raise IndexValidationError([Problem("top level is not a JSON object")], path=source)
            items = raw.get("tickets")
            if not isinstance(items, list):
                raise IndexValidationError(
                    [Problem("top level has no 'tickets' list")], path=source
                )
            checked = check_tickets(items)
            if checked.shape:
                raise IndexValidationError(graph_problems(checked), path=source)
            doc = cls(raw, None, source, checked=checked)
            doc._stdlib = stdlib
            return doc

    @property
    def checked(self) -> CheckedIndex:
        """The shape check of the tickets and their graph (computed once)."""
        if self._checked is None:
            items = self.raw.get("tickets")
            if not isinstance(items, list):
                raise IndexValidationError(
                    [Problem("top level has no 'tickets' list")], path=self.source
                )
            with gc_paused():
                self._checked = check_tickets(items)
        return self._checked

    @property
    def graph(self) -> TicketGraph:
        """The tickets as integer-indexed columns, for the planner."""
        return self.checked.graph

    @property
    def tickets(self) -> list[Ticket]:
        """Typed views of every ticket, in index order (built on first use)."""
        views = self._ensure_views()
        if not self._all_views:
            for pos in range(len(views)):
                if views[pos] is None:
                    self._view(pos)
            self._all_views = True
        return views  # type: ignore[return-value]  # no None left

    def _ensure_views(self) -> list[Ticket | None]:
        if self._views is None:
            self._views = [None] * len(self.raw["tickets"])
        return self._views

    def _view(self, pos: int) -> Ticket:
        views = self._ensure_views()
        view = views[pos]
        if view is None:
            view = views[pos] = Ticket.model_validate(self.raw["tickets"][pos])
        return view

    def _position(self, ticket_id: str) -> int | None:
        return self.graph.index.get(ticket_id)

    def __iter__(self) -> Iterator[Ticket]:
        return iter(self.tickets)

    def __len__(self) -> int:
        return len(self.raw["tickets"])

    def get(self, ticket_id: str) -> Ticket | None:
        """The ticket with that id, or None."""
        pos = self._position(ticket_id)
        return None if pos is None else self._view(pos)

    def waits_for(self, ticket_id: str) -> list[str]:
        """The ids ``ticket_id`` waits for: its ``dependencies`` and ``blockedBy``, and
        every ticket whose ``blocks`` names it (each once)."""
        pos = self._position(ticket_id)
        if pos is None:
            raise KeyError(ticket_id)
        return list(dict.fromkeys(self.graph.dep_names[pos]))

    @property
    def warnings(self) -> list[Problem]:
        """What is odd but not wrong: unknown ids in informational links (``relatedTo``, ...)."""
        return self.checked.warnings

    def link_summary(self) -> LinkSummary:
        """The schema version and the execution edges per field (O(edges), for reports)."""
        return summarize_links(self.graph, self.raw.get("version"), self.raw["tickets"])

    def ticket_json(self, ticket_id: str) -> dict[str, Any]:
        """The ticket's raw JSON object, all fields as the index has them."""
        pos = self._position(ticket_id)
        if pos is None:
            raise KeyError(ticket_id)
        item: dict[str, Any] = self.raw["tickets"][pos]
        return item

    # -- editing -------------------------------------------------------------

    def set_state(self, ticket_id: str, state: State, reason: str | None = None) -> None:
        """Set a ticket's state; a DEFERRED reason is stored, and removed otherwise."""
        pos = self._position(ticket_id)
        if pos is None:
            raise KeyError(ticket_id)
        state = State(state)
        item = self.raw["tickets"][pos]
        item["state"] = state.value
        if state is State.DEFERRED and reason is not None:
            item["deferred_reason"] = reason
        else:
            item.pop("deferred_reason", None)
        self.graph.states[pos] = STATE_CODES[state.value]
        if self._views is not None and self._views[pos] is not None:
            self._views[pos].state = state  # type: ignore[union-attr]

    # -- writing -------------------------------------------------------------

    def dumps(self) -> bytes:
        """The index as written to disk: 2-space indent, key order kept, trailing newline."""
        if not self._stdlib:
            try:
                return orjson.dumps(self.raw, option=orjson.OPT_INDENT_2) + b"\n"
            except TypeError:  # an integer past 64 bits, or a value set from Python
                pass
        return (json.dumps(self.raw, indent=2, ensure_ascii=False) + "\n").encode()


def _stdlib_loads(data: bytes | str, source: str) -> Any:
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as exc:
        raise IndexValidationError(
            [Problem(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")],
            path=source,
        ) from None
    except UnicodeDecodeError as exc:
        raise IndexValidationError([Problem(f"not UTF-8: {exc.reason}")], path=source) from None
    if _has_non_finite(raw):
        raise IndexValidationError(
            [Problem("malformed JSON: NaN and Infinity are not JSON numbers")], path=source
        )
    return raw


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


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
    write_atomic(Path(path), doc.dumps())
