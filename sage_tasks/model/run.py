"""A run's options: how it was asked to run, as submitted and stored with the run.

They are kept in the run's record as one JSON object (``RunInfo.extra`` in
Redis, keys as below); :meth:`RunOptions.read` is the one place that reads it
and gives each option its one default, so a run stored by an earlier version
(an option missing) reads the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Schedule(StrEnum):
    """How the run sends its tickets (``sage-submit --schedule``)."""

    LEVELS = "levels"  # one batch (level of the graph) after the other
    EAGER = "eager"  # each ticket as soon as its dependencies are committed


@dataclass(frozen=True)
class RunOptions:
    """The options of one run."""

    planned: int  # tickets the run will end (run or block); default: the run's ``to_run``
    schedule: Schedule = Schedule.LEVELS
    allow_main: bool = False  # the run may write to a protected branch
    retry_deferred: bool = False  # DEFERRED tickets of the index run again
    cap: int = 0  # eager: at most this many tickets in flight (0: no cap)
    overlaps: bool = False  # eager: some tickets' paths overlap (the release checks them)
    conflict_retries: int = 0  # re-runs of a ticket whose patch conflicts

    @property
    def eager(self) -> bool:
        return self.schedule == Schedule.EAGER

    @classmethod
    def read(cls, extra: Mapping[str, Any], *, to_run: int) -> RunOptions:
        """The options stored in a run's record (``to_run``: the run's own count, the
        default of ``planned``); a value of the wrong kind counts as missing."""
        schedule = extra.get("schedule")
        return cls(
            planned=_count(extra.get("planned"), to_run),
            schedule=Schedule(schedule) if schedule in set(Schedule) else Schedule.LEVELS,
            allow_main=bool(extra.get("allow_main")),
            retry_deferred=bool(extra.get("retry_deferred")),
            cap=_count(extra.get("cap"), 0),
            overlaps=bool(extra.get("overlaps")),
            conflict_retries=_count(extra.get("conflict_retries"), 0),
        )

    def to_json(self) -> dict[str, Any]:
        """The stored form (the keys :meth:`read` reads)."""
        return {
            "allow_main": self.allow_main,
            "retry_deferred": self.retry_deferred,
            "schedule": self.schedule.value,
            "planned": self.planned,
            "cap": self.cap,
            "overlaps": self.overlaps,
            "conflict_retries": self.conflict_retries,
        }


def _count(value: object, default: int) -> int:
    """A stored count: ``default`` when missing or not a number."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    try:
        return int(value) if isinstance(value, float | str) else default
    except ValueError:
        return default
