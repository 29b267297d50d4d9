"""A run's summary and the seed's metrics, computed from its record in Redis.

Wall time, summed ticket time, speedup (summed ticket time over wall time)
and parallel efficiency (speedup over the most tickets that ran at once).
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

import orjson

from sage_tasks.core.graph import gc_paused
from sage_tasks.store.runstate import Phase, RunInfo, RunStatus, RunStore, number

#: the final states as plain strings (an enum member's lookup costs more, row after row)
_COMPLETED, _DEFERRED, _BLOCKED = (
    p.value for p in (Phase.COMPLETED, Phase.DEFERRED, Phase.BLOCKED)
)


@dataclass
class TicketRow:
    """One ticket of a run, as ``status`` shows it."""

    id: str
    state: str
    host: str = ""
    attempts: int = 0
    duration_s: float | None = None
    reason: str = ""
    commit: str = ""
    batch: int | None = None
    started: float | None = None
    ended: float | None = None
    #: the worker slot that ran it: node name and pool process index (``tickets@w1#2``)
    slot: str = ""
    #: when its running attempt last beat, and that attempt's number
    heartbeat: float | None = None
    attempt_no: int = 0

    def running_for(self, now: float) -> float | None:
        """How long its command has been running (None unless it runs now)."""
        if self.state != Phase.RUNNING or self.started is None:
            return None
        return max(0.0, now - self.started)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "host": self.host,
            "slot": self.slot,
            "attempts": self.attempts,
            "duration_s": self.duration_s,
            "reason": self.reason,
            "commit": self.commit,
            "batch": self.batch,
            "started": self.started,
            "ended": self.ended,
            "heartbeat": self.heartbeat,
            "attempt_no": self.attempt_no,
        }


@dataclass
class RunSummary:
    """What a run did, for ``--wait``, ``status`` and the report."""

    info: RunInfo
    rows: list[TicketRow]
    batches: list[list[str]]
    critical_path: list[str] = field(default_factory=list)

    @functools.cached_property
    def completed(self) -> list[str]:
        return [r.id for r in self.rows if r.state == _COMPLETED]

    @functools.cached_property
    def deferred(self) -> dict[str, str]:
        return {r.id: r.reason for r in self.rows if r.state == _DEFERRED}

    @functools.cached_property
    def blocked(self) -> list[str]:
        return [r.id for r in self.rows if r.state == _BLOCKED]

    @property
    def finished(self) -> bool:
        return self.info.status in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.CANCELLED)

    @functools.cached_property
    def wall_s(self) -> float:
        end = self.info.ended or max((r.ended or 0.0 for r in self.rows), default=0.0)
        start = self.info.created
        return max(0.0, end - start) if end else 0.0

    @functools.cached_property
    def ticket_time_s(self) -> float:
        return sum(r.duration_s or 0.0 for r in self.rows)

    @functools.cached_property
    def max_parallel(self) -> int:
        """The most tickets whose commands ran at the same moment.

        A sweep over the start and end times, an end before a start at the same
        moment: right after the i-th start (1-based, by time) i tickets have
        started and every one ending by then has ended, and only a start raises
        the count. Two sorts of floats and a binary search a ticket.
        """
        spans = [(r.started, r.duration_s) for r in self.rows if r.started and r.duration_s]
        starts = sorted([s for s, _ in spans])
        ends = sorted([s + d for s, d in spans])
        return max(0, max((n - bisect_right(ends, t) for n, t in enumerate(starts, 1)), default=0))

    @property
    def speedup(self) -> float | None:
        wall = self.wall_s
        return round(self.ticket_time_s / wall, 2) if wall > 0 else None

    @property
    def efficiency(self) -> float | None:
        s = self.speedup
        return round(s / self.max_parallel, 2) if s is not None and self.max_parallel else None

    def exit_code(self) -> int:
        """0 all COMPLETED, 1 DEFERRED or BLOCKED tickets, 3 the run failed to run, 4 cancelled."""
        if self.info.status == RunStatus.CANCELLED:
            return 4
        if self.info.status == RunStatus.FAILED:
            return 3
        if self.deferred or self.blocked:
            return 1
        if any(r.state not in (Phase.COMPLETED,) for r in self.rows):
            return 3
        return 0

    def to_json(self, *, tickets: bool = True) -> dict[str, Any]:
        """The ``--json`` document; without ``tickets`` the caller adds (streams) them itself."""
        return {
            "run_id": self.info.run_id,
            "status": self.info.status,
            "branch": self.info.branch,
            "base": self.info.base_sha,
            "head": self.info.head,
            "completed": self.completed,
            "deferred": self.deferred,
            "blocked": self.blocked,
            "duration_s": round(self.wall_s, 3),
            "ticket_time_s": round(self.ticket_time_s, 3),
            "speedup": self.speedup,
            "efficiency": self.efficiency,
            "max_parallel": self.max_parallel,
            "batches": len(self.batches),
            **({"tickets": [r.to_json() for r in self.rows]} if tickets else {}),
            "error": self.info.error or None,
        }


def load_summary(store: RunStore, run_id: str) -> RunSummary | None:
    """The run's summary, or None when Redis does not know the run."""
    loaded = load_run(store, run_id)
    return loaded[0] if loaded is not None else None


def load_run(store: RunStore, run_id: str) -> tuple[RunSummary, dict[str, Any]] | None:
    """The run's summary and the plan stored with it (read and parsed once), or None."""
    info = store.get(run_id)
    plan_raw = store.plan_json(run_id)
    if info is None or plan_raw is None:
        return None
    plan = orjson.loads(plan_raw)
    batches: list[list[str]] = plan.get("batches", [])
    ids = [t for b in batches for t in b] + list(plan.get("blocked", []))
    with gc_paused():  # a row per ticket: no reference cycles for the collector to find
        rows = [_row(tid, values) for tid, values in store.ticket_fields(run_id, ids, ROW_FIELDS)]
    return RunSummary(info, rows, batches, list(plan.get("critical_path", []))), plan


#: the fields of a ticket's record a :class:`TicketRow` shows
ROW_FIELDS = [
    "state",
    "host",
    "attempts",
    "duration",
    "reason",
    "commit",
    "batch",
    "started",
    "ended",
    "slot",
    "heartbeat",
    "attempt_no",
]


def _row(tid: str, values: list[str | None]) -> TicketRow:
    """A ticket's row from its record's :data:`ROW_FIELDS` (None where unset)."""
    state, host, attempts, duration, reason, commit, batch, started, ended, slot = values[:10]
    heartbeat, attempt_no = values[10:12]
    return TicketRow(
        id=tid,
        state=state or Phase.PENDING.value,
        host=host or "",
        attempts=int(attempts or 0),
        duration_s=number(duration),
        reason=reason or "",
        commit=commit or "",
        batch=int(batch) if batch and batch.lstrip("-").isdigit() else None,
        started=number(started),
        ended=number(ended),
        slot=slot or "",
        heartbeat=number(heartbeat),
        attempt_no=int(attempt_no or 0),
    )
