"""A run's summary and the seed's metrics, computed from its record in Redis.

Wall time, summed ticket time, speedup (summed ticket time over wall time)
and parallel efficiency (speedup over the most tickets that ran at once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sage_tasks.store.runstate import Phase, RunInfo, RunStatus, RunStore, number


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
        }


@dataclass
class RunSummary:
    """What a run did, for ``--wait``, ``status`` and the report."""

    info: RunInfo
    rows: list[TicketRow]
    batches: list[list[str]]
    critical_path: list[str] = field(default_factory=list)

    @property
    def completed(self) -> list[str]:
        return [r.id for r in self.rows if r.state == Phase.COMPLETED]

    @property
    def deferred(self) -> dict[str, str]:
        return {r.id: r.reason for r in self.rows if r.state == Phase.DEFERRED}

    @property
    def blocked(self) -> list[str]:
        return [r.id for r in self.rows if r.state == Phase.BLOCKED]

    @property
    def finished(self) -> bool:
        return self.info.status in (RunStatus.FINISHED, RunStatus.FAILED)

    @property
    def wall_s(self) -> float:
        end = self.info.ended or max((r.ended or 0.0 for r in self.rows), default=0.0)
        start = self.info.created
        return max(0.0, end - start) if end else 0.0

    @property
    def ticket_time_s(self) -> float:
        return sum(r.duration_s or 0.0 for r in self.rows)

    @property
    def max_parallel(self) -> int:
        """The most tickets whose commands ran at the same moment."""
        events: list[tuple[float, int]] = []
        for r in self.rows:
            if r.started and r.duration_s:
                events.append((r.started, 1))
                events.append((r.started + r.duration_s, -1))
        best = cur = 0
        for _, step in sorted(events):
            cur += step
            best = max(best, cur)
        return best

    @property
    def speedup(self) -> float | None:
        wall = self.wall_s
        return round(self.ticket_time_s / wall, 2) if wall > 0 else None

    @property
    def efficiency(self) -> float | None:
        s = self.speedup
        return round(s / self.max_parallel, 2) if s is not None and self.max_parallel else None

    def exit_code(self) -> int:
        """0 all COMPLETED, 1 DEFERRED or BLOCKED tickets, 3 the run failed to run."""
        if self.info.status == RunStatus.FAILED:
            return 3
        if self.deferred or self.blocked:
            return 1
        if any(r.state not in (Phase.COMPLETED,) for r in self.rows):
            return 3
        return 0

    def to_json(self) -> dict[str, Any]:
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
            "tickets": [r.to_json() for r in self.rows],
            "error": self.info.error or None,
        }


def load_summary(store: RunStore, run_id: str) -> RunSummary | None:
    """The run's summary, or None when Redis does not know the run."""
    info = store.get(run_id)
    plan_raw = store.plan_json(run_id)
    if info is None or plan_raw is None:
        return None
    plan = json.loads(plan_raw)
    batches: list[list[str]] = plan.get("batches", [])
    ids = [t for b in batches for t in b] + list(plan.get("blocked", []))
    records = store.tickets(run_id, ids)
    rows = []
    for tid in ids:
        rec = records[tid]
        batch = rec.get("batch")
        rows.append(
            TicketRow(
                id=tid,
                state=rec.get("state", Phase.PENDING.value),
                host=rec.get("host", ""),
                attempts=int(rec.get("attempts") or 0),
                duration_s=number(rec.get("duration")),
                reason=rec.get("reason", ""),
                commit=rec.get("commit", ""),
                batch=int(batch) if batch and batch.lstrip("-").isdigit() else None,
                started=number(rec.get("started")),
                ended=number(rec.get("ended")),
                slot=rec.get("slot", ""),
            )
        )
    return RunSummary(info, rows, batches, list(plan.get("critical_path", [])))
