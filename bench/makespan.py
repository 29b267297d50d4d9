"""Makespan of ``--schedule levels`` and ``--schedule eager`` against the bound no schedule beats.

    python bench/makespan.py [--seed 7] [--slots 4] [--tickets 24] [--quick]

Random DAGs of three shapes, seeded:

* ``wide``: most tickets independent, a few joins of two or three of them;
* ``deep``: a few long chains with edges across them;
* ``layered-skewed``: layers where each ticket needs one or two of the layer
  before, and durations skewed (most short, a few long), which is where a
  batch barrier hurts most.

Each ticket sleeps for its duration (drawn from the seed, 0.3 s to 3 s) and
writes its own file. They run on a fixed number of ticket slots (two
``sage-worker tickets`` processes sharing ``--slots``) against a private
``redis-server``, one repository and one commit worker; both schedules run
the same DAG in turn. The makespan is from the first ticket's start to the
last ticket's commit, read from the run records; the bound is
max(critical path, total work / slots). Beside the measured ratios the table
shows the plan's own estimate of both (``sage-submit --dry-run --json``).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sage_tasks.store import keys  # noqa: E402
from tests.support.fleet import Fleet, unique_queue  # noqa: E402
from tests.support.gitrepo import git, index_bytes, make_repo  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

SHAPES = ("wide", "deep", "layered-skewed")
TARGET = 1.15
#: a run of the benchmark that takes longer has lost its workers
RUN_TIMEOUT_S = 300
SHORTEST, LONGEST = 0.3, 3.0


@dataclass
class Ticket:
    id: str
    deps: list[str]
    seconds: float


def _duration(rng: random.Random, skewed: bool) -> float:
    # skewed: most short, a few long (median 0.9 s, a long tail)
    d = rng.lognormvariate(-0.1, 0.7) if skewed else rng.uniform(SHORTEST, LONGEST)
    return round(min(LONGEST, max(SHORTEST, d)), 2)


def make_dag(shape: str, n: int, seed: int) -> list[Ticket]:
    """A seeded random DAG of ``n`` tickets of the given shape (ids in a valid order)."""
    rng = random.Random(f"{shape}:{seed}:{n}")
    out: list[Ticket] = []
    if shape == "wide":
        roots = max(2, n * 3 // 4)
        for i in range(n):
            deps = [] if i < roots else sorted(rng.sample([t.id for t in out[:roots]], 2))
            out.append(Ticket(f"W{i:03d}", deps, _duration(rng, False)))
    elif shape == "deep":
        chains = max(2, n // 6)
        for i in range(n):
            deps = [out[i - chains].id] if i >= chains else []
            if i >= 2 * chains and rng.random() < 0.3:
                cross = out[i - chains - 1 - rng.randrange(chains - 1)].id
                deps = sorted({*deps, cross})
            out.append(Ticket(f"D{i:03d}", deps, _duration(rng, False)))
    elif shape == "layered-skewed":
        layers = 4
        width = max(1, n // layers)
        for i in range(n):
            layer = min(i // width, layers - 1)
            before = [t.id for t in out if t.id.startswith(f"L{layer - 1}")]
            deps = sorted(rng.sample(before, min(len(before), rng.choice((1, 2)))))
            out.append(Ticket(f"L{layer}-{i:03d}", deps, _duration(rng, True)))
    else:
        raise ValueError(shape)
    return out


def lower_bound(dag: list[Ticket], slots: int) -> tuple[float, float, float]:
    """(bound, critical path, total work / slots) in seconds."""
    finish: dict[str, float] = {}
    for t in dag:
        finish[t.id] = max((finish[d] for d in t.deps), default=0.0) + t.seconds
    critical = max(finish.values(), default=0.0)
    work = sum(t.seconds for t in dag) / slots
    return max(critical, work), critical, work


def index_of(dag: list[Ticket]) -> dict[str, Any]:
    tickets = [
        {
            "id": t.id,
            "title": f"sleep {t.seconds}",
            "dependencies": t.deps,
            "estimate": t.seconds,
            "run": f"sleep {t.seconds} && mkdir -p out && echo {t.id} > out/{t.id}.txt",
        }
        for t in dag
    ]
    return {"version": "1.0", "tickets": tickets}


def commit_index(repo: Path, branch: str, index: dict[str, Any]) -> None:
    """A branch of ``repo`` off main whose ticket index is ``index``."""
    git(repo, "checkout", "-q", "-B", branch, "main")
    path = repo / ".sage" / "tickets" / "index.json"
    path.write_bytes(index_bytes(index))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"index: {branch}")
    git(repo, "checkout", "-q", "main")


def measured_makespan(fleet: Fleet, run_id: str, ids: list[str]) -> float:
    """From the first ticket's start to the last ticket's commit."""
    client = fleet.redis.client()
    starts, ends = [], []
    for tid in ids:
        rec = client.hmget(keys.ticket(run_id, tid), ["started", "ended"])
        starts.append(float(rec[0] or 0))
        ends.append(float(rec[1] or 0))
    return max(ends) - min(starts)


def run_one(
    fleet: Fleet, repo: Path, queue: str, base: str, schedule: str, *extra: str
) -> dict[str, Any]:
    try:
        res = fleet.submit(
            repo, "--base", base, "--schedule", schedule, "--wait", "--json", *extra,
            queue=queue, timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"{schedule} run on {base} did not end in {RUN_TIMEOUT_S} s:\n{fleet.logs()}"
        ) from None
    if res.code != 0 or res.data is None:
        raise SystemExit(f"{schedule} run on {base} failed ({res.code}):\n{res.stderr[-3000:]}")
    return res.data


def estimate(fleet: Fleet, repo: Path, queue: str, base: str, slots: int) -> dict[str, Any]:
    res = fleet.submit(
        repo, "--base", base, "--dry-run", "--json", "--parallel", str(slots), queue=queue
    )
    data: dict[str, Any] = json.loads(res.stdout)["schedules"]
    return data


@dataclass
class Row:
    shape: str
    tickets: int
    bound: float
    levels: float
    eager: float
    est_levels: float
    est_eager: float
    est_bound: float

    @property
    def ok(self) -> bool:
        return self.eager <= TARGET * self.bound


def bench_shapes(
    fleet: Fleet, repo: Path, queue: str, shapes: dict[str, list[Ticket]], slots: int
) -> list[Row]:
    """Both schedules on every shape, in turn, on one fleet."""
    rows = []
    for shape, dag in shapes.items():
        ids = [t.id for t in dag]
        bound, _, _ = lower_bound(dag, slots)
        est = estimate(fleet, repo, queue, f"shape-{shape}", slots)
        spans = {}
        for schedule in ("levels", "eager"):
            data = run_one(fleet, repo, queue, f"shape-{shape}", schedule, "--parallel", str(slots))
            spans[schedule] = measured_makespan(fleet, data["run_id"], ids)
            print(f"  {shape} {schedule}: {spans[schedule]:.2f} s", file=sys.stderr, flush=True)
        rows.append(
            Row(
                shape, len(dag), bound, spans["levels"], spans["eager"],
                est["levels"], est["eager"], est["lower_bound"],
            )
        )  # fmt: skip
    return rows


def prepared(root: Path, shapes: dict[str, list[Ticket]], slots: int) -> tuple[Fleet, Path, str]:
    """A fleet of ``slots`` ticket slots in two processes, one repo with a branch per shape."""
    server = RedisServer(root / "redis")
    server.start()
    fleet = Fleet(root, server, SAGE_SUPERVISOR_INTERVAL="2")
    first = slots - slots // 2
    fleet.start_tickets("tickets1", concurrency=first)
    if slots // 2:
        fleet.start_tickets("tickets2", concurrency=slots // 2)
    warm = [Ticket(f"WARM{i}", [], 0.3) for i in range(2 * slots)]
    repo = make_repo(root / "repo", {}, index_of(warm))
    for shape, dag in shapes.items():
        commit_index(repo, f"shape-{shape}", index_of(dag))
    queue = unique_queue()
    fleet.start_commit(repo, queue)
    # every worker process clones its mirror once, before anything is timed
    run_one(fleet, repo, queue, "main", "levels")
    return fleet, repo, queue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--tickets", type=int, default=24, help="tickets per shape")
    parser.add_argument("--quick", action="store_true", help="12 tickets per shape")
    args = parser.parse_args()
    n = 12 if args.quick else args.tickets
    shapes = {s: make_dag(s, n, args.seed) for s in SHAPES}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sage-makespan-") as tmp:
        fleet, repo, queue = prepared(Path(tmp), shapes, args.slots)
        try:
            rows = bench_shapes(fleet, repo, queue, shapes, args.slots)
        finally:
            fleet.stop()
            fleet.redis.stop(kill=True)
    print(
        f"makespan, seed {args.seed}, {args.slots} ticket slots, {n} tickets a shape, "
        f"durations {SHORTEST}-{LONGEST} s; ratios to max(critical path, work / slots)"
    )
    print(
        f"{'shape':<16}{'bound s':>9}{'levels s':>10}{'eager s':>9}"
        f"{'levels/bound':>14}{'eager/bound':>13}{'plan est. L/E':>15}  eager <= {TARGET}x"
    )
    for r in rows:
        est = f"{r.est_levels / r.est_bound:.2f}/{r.est_eager / r.est_bound:.2f}"
        print(
            f"{r.shape:<16}{r.bound:>9.2f}{r.levels:>10.2f}{r.eager:>9.2f}"
            f"{r.levels / r.bound:>14.2f}{r.eager / r.bound:>13.2f}{est:>15}  "
            f"{'yes' if r.ok else 'NO'}"
        )
    print(f"({time.monotonic() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
