"""A ticket's outcome: what ``run_ticket`` hands to ``commit_ticket``.

On the wire (Celery's JSON, the ticket record's ``result`` field) it is a
JSON object ``{"ticket": ..., "outcome": <kind>, ...}``; the optional fields
are written only when set, in a fixed order, so a worker of an earlier
version reads what this one writes and the other way round. Keys this
version does not know are kept and written back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class OutcomeKind(StrEnum):
    """What became of a ticket's delivery."""

    OK = "ok"  # the command succeeded: commit its patch
    FAILED = "failed"  # the command (or its preparation) failed: commit it DEFERRED
    DONE = "done"  # the ticket was already final: nothing to do
    LOST = "lost"  # the run is gone from Redis
    BLOCKED = "blocked"  # a dependency can never be committed
    STALE = "stale"  # another attempt took the ticket over: void
    CANCELLED = "cancelled"  # the run was cancelled: nothing to commit

    @classmethod
    def read(cls, value: object) -> OutcomeKind:
        """The kind a message names; one this version does not know counts as ``failed``
        (it is committed DEFERRED, never dropped)."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.FAILED


class MalformedOutcome(ValueError):
    """An outcome message that is not a JSON object of the expected shape."""


#: the optional fields, in the order they are written on the wire
_STR = ("reason", "state", "output", "patch", "head")
_INT = ("output_bytes", "files", "attempt", "rerun", "attempt_no")


@dataclass
class Outcome:
    """One ticket's outcome; ``None`` fields are absent from the wire."""

    ticket: str
    kind: OutcomeKind
    reason: str | None = None
    state: str | None = None
    output: str | None = None
    output_bytes: int | None = None
    patch: str | None = None  # the sha256 of the patch stored in Redis ('' when empty)
    files: int | None = None
    duration_s: float | None = None
    attempt: int | None = None  # the try of the command (a ticket's ``retries``)
    head: str | None = None
    rerun: int | None = None  # the conflict re-run this outcome is of
    attempt_no: int | None = None  # the ticket's attempt (its fence)
    unknown: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The wire form: ``ticket``, ``outcome``, then the fields that are set."""
        out: dict[str, Any] = {"ticket": self.ticket, "outcome": self.kind.value}
        for f in fields(self)[2:]:
            value = getattr(self, f.name)
            if f.name != "unknown" and value is not None:
                out[f.name] = value
        out.update(self.unknown)
        return out

    @classmethod
    def from_json(cls, data: object) -> Outcome:
        """Read the wire form; :class:`MalformedOutcome` when it is not one."""
        if not isinstance(data, Mapping) or not isinstance(data.get("ticket"), str):
            raise MalformedOutcome("not an outcome object with a ticket id")
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name in _STR and value is not None:
                values[name] = str(value)
            elif name in _INT and value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise MalformedOutcome(f"outcome field {name} is not an integer")
                values[name] = value
            elif name == "duration_s" and value is not None:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise MalformedOutcome("outcome field duration_s is not a number")
                values[name] = value
        unknown = {
            k: v for k, v in data.items() if k not in known and k not in ("ticket", "outcome")
        }
        kind = OutcomeKind.read(data.get("outcome"))
        return cls(ticket=data["ticket"], kind=kind, **values, unknown=unknown)
