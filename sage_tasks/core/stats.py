"""Plan statistics, as the seed's batch statistics calculator gave them.

How many batches and how wide, how much of the work can start at once, how
many workers are worth having, and the estimated time one worker would take
against the estimated time of the plan on N workers.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import chain
from typing import Any

#: ``--parallel auto`` never picks more than this many workers (as the seed)
AUTO_MAX_WORKERS = 8
#: the recommended worker count gets within this factor of the fastest levels schedule
RECOMMEND_SLACK = 1.1


def auto_workers(cores: int, to_run: int) -> int:
    """``--parallel auto``: half the cores, at least 1, at most 8, at most the tickets to run."""
    return max(1, min(cores // 2, AUTO_MAX_WORKERS, to_run))


def level_steps(widths: Sequence[int], workers: int) -> int:
    """Rounds of ``workers`` tickets needed when each level must finish before the next."""
    return sum(-(-w // workers) for w in widths)


def recommended_workers(widths: Sequence[int]) -> int:
    """The fewest workers whose levels schedule is within 10% of the fastest one.

    The fastest takes one round per level (as many workers as the widest
    level); the count is by tickets, not by estimates. Binary search: the
    number of rounds never grows with more workers.
    """
    widest = max(widths, default=0)
    if widest <= 1:
        return 1
    target = len(widths) * RECOMMEND_SLACK
    lo, hi = 1, widest
    while lo < hi:
        mid = (lo + hi) // 2
        if level_steps(widths, mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def makespan(weights: Sequence[float], workers: int) -> float:
    """Time for one group on ``workers`` workers, each taking the next ticket when free."""
    if not weights:
        return 0.0
    if len(weights) <= workers:
        return float(max(weights))
    busy = [0.0] * workers
    for w in weights:
        heapq.heapreplace(busy, busy[0] + w)
    return max(busy)


@dataclass(frozen=True, slots=True)
class PlanStats:
    """Numbers that describe a plan (see :func:`compute_stats`)."""

    #: groups sent one after the other
    batches: int
    #: topological levels of the tickets to run
    levels: int
    widest_batch: int
    widest_level: int
    #: tickets to run with no dependency still to run (they can all start at once)
    independent: int
    #: ``independent`` over the tickets to run, 0..1 (the seed's parallelization potential)
    independent_share: float
    #: the worker count the estimates below assume: ``--parallel`` N, else the recommendation
    workers: int
    #: see :func:`recommended_workers`
    recommended_workers: int
    #: tickets to run that have an ``estimate``
    estimated: int
    #: one ticket at a time: the number of tickets to run
    sequential_steps: int
    #: rounds of ``workers`` tickets through the batches
    parallel_steps: int
    #: summed estimates (a ticket without one counts as the mean of the others); None without
    sequential_seconds: float | None
    #: the batches one after another on ``workers`` workers; None without estimates
    parallel_seconds: float | None
    #: sequential over parallel time (seconds when estimated, else steps)
    speedup: float | None

    def to_json(self) -> dict[str, Any]:
        """The statistics as a JSON object."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanStats:
        """Read back what :meth:`to_json` wrote."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def compute_stats(
    batches: Sequence[Sequence[int]],
    widths: Sequence[int],
    weights: Sequence[float] | None,
    estimated: int,
    parallel: int | None,
) -> PlanStats:
    """Statistics of a plan given as ticket numbers.

    ``widths`` are the level sizes; ``weights`` the seconds per ticket number
    (None when no ticket to run has an estimate).
    """
    to_run = sum(widths)
    recommended = recommended_workers(widths)
    workers = parallel or recommended
    steps = sum(-(-len(b) // workers) for b in batches)
    seq_s: float | None = None
    par_s: float | None = None
    if weights is not None:
        weigh = weights.__getitem__
        seq_s = float(sum(map(weigh, chain.from_iterable(batches))))
        par_s = 0.0
        for b in batches:
            par_s += (
                max(map(weigh, b)) if len(b) <= workers else makespan(list(map(weigh, b)), workers)
            )
    if par_s:
        speedup: float | None = round(seq_s / par_s, 3) if seq_s is not None else None
    else:
        speedup = round(to_run / steps, 3) if steps else None
    independent = widths[0] if widths else 0
    return PlanStats(
        batches=len(batches),
        levels=len(widths),
        widest_batch=max((len(b) for b in batches), default=0),
        widest_level=max(widths, default=0),
        independent=independent,
        independent_share=round(independent / to_run, 4) if to_run else 0.0,
        workers=workers,
        recommended_workers=recommended,
        estimated=estimated,
        sequential_steps=to_run,
        parallel_steps=steps,
        sequential_seconds=seq_s,
        parallel_seconds=par_s,
        speedup=speedup,
    )
