"""Benchmark: load + validate + plan a large ticket index, against networkx and rustworkx.

    python bench/plan.py [--sizes 1000,10000,100000] [--rounds 3] [--repeat 2] [--in-order]
                         [--schema 2.2]

For each size a random DAG index (about ``--deps`` dependencies a ticket) is
written to a temp file. Each contender then runs in its own fresh
subprocess (``--rounds`` of them, interleaved with the other contenders), from
the file's bytes to sorted levels plus a cycle check; the table shows the
best and the median wall time and the peak resident memory of a subprocess
(``VmHWM``, which includes the interpreter itself):

* ``sage``: ``load_index`` + ``build_plan`` (parse, shape checks, ids,
  dependencies, cycles, selection, levels, critical path, statistics);
* ``networkx``: stdlib ``json`` parse, ``DiGraph``,
  ``is_directed_acyclic_graph``, ``topological_generations``;
* ``rustworkx``: the same with ``PyDiGraph`` (stdlib ``json`` parse), and
  ``rustworkx+orjson`` with the parser sage-tasks uses;
* ``json``/``orjson``: the parse alone, for scale.

With ``--schema 2.2`` each edge is written at random as a ``dependencies``
entry, a ``blockedBy`` entry or an entry in the other ticket's ``blocks``
(Sage schema 2.2.0, where a ticket waits for the union), and empty lists are
``null`` half the time; networkx and rustworkx then build the same union.

sage-tasks pauses the cyclic garbage collector while it loads and plans (see
``gc_paused`` in ``sage_tasks/core/graph.py``); the other contenders run with
the collector as a caller finds it, which costs json.loads about a third.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = ("json", "orjson", "sage", "networkx", "rustworkx", "rustworkx+orjson")
ESTIMATES = ("30 minutes", "1 hour", "2h", "45m", "1.5 hours", "20 min")


def make_index(n: int, mean_deps: float, seed: int = 7, shuffle: bool = True) -> dict[str, Any]:
    """A random DAG: each ticket depends on 0 to 2*mean_deps of the 2000 tickets before it.

    About 5% of the tickets are COMPLETED and half have an estimate. With
    ``shuffle`` the tickets are listed in random order, so dependencies point
    both ways in the file (the harder case); otherwise every dependency comes
    before its dependents, as Sage usually writes an index.
    """
    rng = random.Random(seed)
    width = 2 * round(mean_deps)
    tickets = []
    for i in range(n):
        window = range(max(0, i - 2000), i)
        k = min(len(window), rng.randint(0, width))
        deps = sorted(rng.sample(window, k)) if k else []
        ticket: dict[str, Any] = {
            "id": f"T-{i:06d}",
            "title": f"Ticket number {i}",
            "type": "implementation",
            "state": "COMPLETED" if rng.random() < 0.05 else "UNPROCESSED",
            "priority": f"P{rng.randint(0, 3)}",
            "dependencies": [f"T-{d:06d}" for d in deps],
            "run": f"make -C mod{i % 50} t{i}",
            "acceptance_criteria": ["builds", "tests pass"],
        }
        if rng.random() < 0.5:
            ticket["estimate"] = rng.choice(ESTIMATES)
        tickets.append(ticket)
    if shuffle:
        rng.shuffle(tickets)
    return {"version": "1.0", "tickets": tickets}


def split_links(raw: dict[str, Any], seed: int = 11) -> dict[str, Any]:
    """The same graph in schema 2.2.0: each edge in one of the three fields, at random."""
    rng = random.Random(seed)
    by_id = {t["id"]: t for t in raw["tickets"]}
    for t in raw["tickets"]:
        own: list[str] = []
        for d in t["dependencies"]:
            place = rng.randrange(3)
            if place == 0:
                own.append(d)
            elif place == 1:
                t.setdefault("blockedBy", []).append(d)
            else:
                by_id[d].setdefault("blocks", []).append(t["id"])
        t["dependencies"] = own if own or rng.random() < 0.5 else None
    raw["version"] = "2.2.0"
    return raw


# -- contenders (each runs in its own subprocess) ------------------------------


def run_json(path: str) -> object:
    return json.loads(Path(path).read_bytes())


def run_orjson(path: str) -> object:
    import orjson

    return orjson.loads(Path(path).read_bytes())


def run_sage(path: str) -> object:
    from sage_tasks.core.index import load_index
    from sage_tasks.core.plan import build_plan

    return build_plan(load_index(path), has_executor=True)


def _links(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """In schema 2.2.0, the (dependency, dependent) pairs ``blockedBy`` and ``blocks`` add."""
    if raw.get("version") != "2.2.0":
        return []
    tickets = raw["tickets"]
    pairs = [(d, t["id"]) for t in tickets for d in t.get("blockedBy") or ()]
    return pairs + [(t["id"], b) for t in tickets for b in t.get("blocks") or ()]


def _edges(raw: dict[str, Any]) -> tuple[list[str], list[tuple[int, int]]]:
    tickets = raw["tickets"]
    ids = [t["id"] for t in tickets]
    pos = {t: i for i, t in enumerate(ids)}
    edges = [(pos[d], i) for i, t in enumerate(tickets) for d in t.get("dependencies") or ()]
    return ids, edges + [(pos[d], pos[t]) for d, t in _links(raw)]


def run_networkx(path: str) -> object:
    import networkx as nx  # type: ignore[import-untyped]

    raw = json.loads(Path(path).read_bytes())
    g = nx.DiGraph()
    for t in raw["tickets"]:
        g.add_node(t["id"])
        for d in t.get("dependencies") or ():
            g.add_edge(d, t["id"])
    for d, tid in _links(raw):
        g.add_edge(d, tid)
    if not nx.is_directed_acyclic_graph(g):
        raise SystemExit("cycle")
    return list(nx.topological_generations(g))


def _rustworkx(raw: dict[str, Any]) -> object:
    import rustworkx as rx

    ids, edges = _edges(raw)
    g = rx.PyDiGraph()
    g.add_nodes_from(ids)
    g.add_edges_from_no_data(edges)
    if not rx.is_directed_acyclic_graph(g):
        raise SystemExit("cycle")
    return rx.topological_generations(g)


def run_rustworkx(path: str) -> object:
    return _rustworkx(json.loads(Path(path).read_bytes()))


def run_rustworkx_orjson(path: str) -> object:
    import orjson

    return _rustworkx(orjson.loads(Path(path).read_bytes()))


RUNNERS: dict[str, Callable[[str], object]] = {
    "json": run_json,
    "orjson": run_orjson,
    "sage": run_sage,
    "networkx": run_networkx,
    "rustworkx": run_rustworkx,
    "rustworkx+orjson": run_rustworkx_orjson,
}


def child(name: str, path: str, repeat: int) -> None:
    """Inside the subprocess: import first (not timed), then time ``repeat`` runs."""
    runner = RUNNERS[name]
    if name == "sage":
        import sage_tasks.core.plan  # noqa: F401
    elif name == "networkx":
        import networkx  # noqa: F401
    elif name.startswith("rustworkx"):
        import rustworkx  # noqa: F401
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = runner(path)
        times.append(time.perf_counter() - start)
        del result
    median = sorted(times)[len(times) // 2]
    print(json.dumps({"best": min(times), "median": median, "rss": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (not its parent's)."""
    try:  # ru_maxrss survives exec on Linux, so it would count the parent's peak
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, path: str, repeat: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, path, "--repeat", str(repeat)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure_all(path: str, rounds: int, repeat: int) -> dict[str, dict[str, float]]:
    """Every contender, in ``rounds`` interleaved rounds, so a busy spell hits them all alike."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    for _ in range(rounds):
        for name in CONTENDERS:
            runs[name].append(measure(name, path, repeat))
    results = {}
    for name, rs in runs.items():
        medians = sorted(r["median"] for r in rs)
        results[name] = {
            "best": min(r["best"] for r in rs),
            "median": medians[len(medians) // 2],
            "rss": max(r["rss"] for r in rs),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per subprocess")
    parser.add_argument("--rounds", type=int, default=3, help="subprocesses per contender")
    parser.add_argument("--deps", type=float, default=3.0, help="mean dependencies a ticket")
    parser.add_argument(
        "--in-order", action="store_true", help="list dependencies before dependents in the file"
    )
    parser.add_argument(
        "--schema",
        choices=["1.0", "2.2"],
        default="1.0",
        help="2.2: edges split at random between dependencies, blockedBy and blocks",
    )
    parser.add_argument("--child", nargs=2, metavar=("NAME", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        child(args.child[0], args.child[1], args.repeat)
        return

    sizes = [int(s) for s in args.sizes.split(",") if s]
    head = f"{'tickets':>8} {'edges':>8} {'contender':<17} {'best s':>8} {'median s':>9} "
    print(head + f"{'vs sage':>8} {'peak RSS MB':>12}")
    last: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="sage-bench-") as tmp:
        for n in sizes:
            raw = make_index(n, args.deps, shuffle=not args.in_order)
            edges = sum(len(t["dependencies"]) for t in raw["tickets"])
            if args.schema == "2.2":
                raw = split_links(raw)
            path = str(Path(tmp) / f"index-{n}.json")
            Path(path).write_text(json.dumps(raw, indent=2) + "\n")
            del raw
            results = measure_all(path, args.rounds, args.repeat)
            sage = results["sage"]["best"]
            for name, r in results.items():
                ratio = r["best"] / sage
                print(
                    f"{n:>8} {edges:>8} {name:<17} {r['best']:>8.3f} {r['median']:>9.3f} "
                    f"{ratio:>7.2f}x {r['rss']:>12.0f}"
                )
            print()
            last = results
        if last:
            sage, nx, rx = (last[k]["best"] for k in ("sage", "networkx", "rustworkx"))
            print(
                f"{sizes[-1]} tickets (targets are for 100k): "
                f"sage/networkx {sage / nx:.2f} (target <= 0.5), "
                f"sage/rustworkx {sage / rx:.2f} (target <= 1.2), "
                f"sage peak RSS {last['sage']['rss']:.0f} MB (target < 500)"
            )


if __name__ == "__main__":
    main()
