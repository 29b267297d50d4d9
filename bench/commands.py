"""The commands a user types, at 100,000 tickets: each a whole process, against networkx.

    python bench/commands.py [--tickets 100000] [--levels 20] [--rounds 1] [--only NAME,...]

One index of ``--tickets`` tickets in ``--levels`` levels (each ticket depends
on one to five tickets of the levels before it, at least one of the level just
before) is committed to a fresh repository, and a private ``redis-server`` is
started. Then, each as its own process with stdout on a pipe (as in a script
or ``| jq``), timed from start to exit, with its peak resident memory (the
process's, with the git and helper processes it waited for):

* ``networkx``: a Python process that parses the index with ``json`` and
  computes ``topological_generations`` (``bench/plan.py``'s contender);
* ``dry-run`` and ``dry-run --json``: ``sage-submit --dry-run [--json]``;
* ``submit``: ``sage-submit`` (no ``--wait``: it stores the run and sends it);
* ``status`` and ``status --json``, ``report --html``: on a finished run of
  all those tickets (the submitted run, finished in Redis the way the workers
  finish tickets: every record COMPLETED with its host, slot, times, commit);
* ``--wait`` progress: ``sage-submit``'s follower on that run while it is
  half done (``--polls`` refreshes of its progress display, then it stops);
* ``check``: ``sage-submit check`` (the index analysed; no workers answer);
* ``--local`` start: ``sage-submit --local`` until it says the run is
  submitted (private Redis, workers started, run stored), then stopped.

Each command runs right after a networkx run (``--rounds`` such pairs, the
best of each), and its ratio is to that networkx time: on a shared machine
the load moves, and the pair sees the same. The table says which goal each
row meets: ``--dry-run --json`` at most 0.5x, every other command at most 1x,
peak memory under 500 MB; below it, what the run costs in Redis (its keys'
``MEMORY USAGE``, in all and per ticket; goal under 200 MB) on a ``redis-server``
with Redis's default settings, and then with ``deploy/redis.conf``'s
``hash-max-ziplist-value 1024`` (the finished run's keys restored under it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MB = 1024 * 1024
NL = b"\n"
#: goals, as a ratio to networkx
GOAL = {"dry-run --json": 0.5}
MEMORY_GOAL_MB = 500
REDIS_GOAL_MB = 200


def make_index(
    n: int, levels: int, *, seed: int = 11, extra: int = 4, prefix: str = "T-"
) -> dict[str, Any]:
    """``n`` tickets in ``levels`` levels, command ``true``; each depends on one ticket of
    the level before and on up to ``extra`` more of the levels before that."""
    rng = random.Random(seed)
    per = -(-n // levels)
    tickets = []
    for i in range(n):
        level = i // per
        deps: set[int] = set()
        if level:
            lo = (level - 1) * per
            deps.add(rng.randrange(lo, lo + per))
            for _ in range(rng.randint(0, extra)):
                deps.add(rng.randrange(0, level * per))
        tickets.append(
            {
                "id": f"{prefix}{i:06d}",
                "title": f"Ticket number {i}",
                "type": "implementation",
                "state": "UNPROCESSED",
                "priority": f"P{rng.randint(0, 3)}",
                "dependencies": [f"{prefix}{d:06d}" for d in sorted(deps)],
                "run": "true",
                "acceptance_criteria": ["builds", "tests pass"],
            }
        )
    return {"version": "1.0", "tickets": tickets}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def make_repo(root: Path, raw: dict[str, Any]) -> Path:
    repo = root / "repo"
    index = repo / ".sage" / "tickets" / "index.json"
    index.parent.mkdir(parents=True)
    index.write_text(json.dumps(raw, indent=2) + "\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "bench@example.com")
    git(repo, "config", "user.name", "bench")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "index")
    return repo


class Redis:
    """A private redis-server for the benchmark, with Redis's default settings (as a
    user's own Redis may well have them): nothing that changes how keys are encoded."""

    def __init__(self, workdir: Path):
        from sage_tasks.cli.local_redis import free_port

        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class Timing:
    seconds: float
    peak_mb: float
    code: int
    stdout: bytes


def timed(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> Timing:
    """Run ``argv`` with stdout on a pipe; its wall time and peak RSS (``wait4``).

    Called in a small process of its own (see :func:`launcher`): Linux keeps a
    process's peak RSS across fork and exec, so a child of the benchmark,
    which holds the index, would report the benchmark's own peak.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT)
        assert proc.stdout is not None
        shutil.copyfileobj(proc.stdout, out)  # drained as it comes, as a pipe reader would
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode not in ok:
            raise SystemExit(
                f"{' '.join(argv[:4])}... exited {proc.returncode}:\n{err.read().decode()[-3000:]}"
            )
        return Timing(seconds, usage.ru_maxrss / 1024, proc.returncode, out.read())


def launcher() -> Any:
    """A pool of one small process that starts the timed commands (a forkserver's child)."""
    import multiprocessing

    return multiprocessing.get_context("forkserver").Pool(1)


def networkx_child(path: str) -> None:
    """The baseline: parse the index, build the graph, its topological generations."""
    from plan import run_networkx  # bench/plan.py's contender, the same code

    print(len(run_networkx(path)))  # type: ignore[arg-type]


def follow_child(url: str, run_id: str, polls: int) -> None:
    """``--wait``'s follower on a run, stopped after ``polls`` refreshes."""
    from rich.console import Console

    from sage_tasks.store.broker import connect
    from sage_tasks.store.runstate import RunStore
    from sage_tasks.views.follow import follow

    seen = 0

    class Enough(Exception):
        pass

    def on_poll() -> None:
        nonlocal seen
        seen += 1
        if seen > polls:
            raise Enough

    console = Console(stderr=True, force_terminal=True, width=120)
    with contextlib.suppress(Enough):
        follow(
            lambda: RunStore(connect(url), ttl=3600),
            run_id,
            console=console,
            poll_s=0.0,
            on_poll=on_poll,
        )


def finish_tickets(url: str, run_id: str, ids: list[str], *, run_done: bool) -> None:
    """Finish ``ids`` in Redis as the commit worker does (records, finals, run fields)."""
    from sage_tasks.store import keys
    from sage_tasks.store.broker import connect
    from sage_tasks.store.runstate import Phase, RunStatus, RunStore

    store = RunStore(connect(url), ttl=3600)
    now = time.time()
    pipe = store.r.pipeline(transaction=False)
    for n, tid in enumerate(ids):
        started = now - 60 + n * 0.001
        pipe.hset(
            keys.ticket(run_id, tid),
            mapping={
                "state": Phase.COMPLETED.value,
                "host": f"tickets@w{n % 4}",
                "slot": f"tickets@w{n % 4}#{n % 2}",
                "started": str(started),
                "heartbeat": str(started),
                "ran": str(started + 0.01),
                "ended": str(started + 0.02),
                "duration": "0.01",
                "attempts": "1",
                "deliveries": "1",
                "commit": f"{n:040x}",
                "reason": "",
                # what a worker leaves besides: its process, times (and its result, below)
                "queued": str(started - 1),
                "pid": str(10_000 + n % 30_000),
                "pgid": str(10_000 + n % 30_000),
                "space": "4026531836",
                "dispatches": "1",
                "attempt_no": "1",
            },
        )
        result = {
            "ticket": tid,
            "outcome": "ok",
            "patch": "",
            "files": 0,
            "duration_s": 0.01,
            "attempt": 1,
            "attempt_no": 1,
            "head": f"{n + 1:040x}",
        }
        pipe.hset(keys.results(run_id), tid, json.dumps(result))
        pipe.hset(keys.final(run_id), tid, Phase.COMPLETED.value)
        if n % 5000 == 4999:
            pipe.execute()
    pipe.expire(keys.results(run_id), store.ttl)
    pipe.execute()
    info = store.get(run_id)
    assert info is not None
    if run_done:
        store.update(run_id, status=RunStatus.FINISHED.value, started=now - 61, head="f" * 40)
        store.finish(run_id, info.repo, status=RunStatus.FINISHED)
    else:
        store.update(run_id, status=RunStatus.RUNNING.value, started=now - 61, batch=10)


def run_memory(client: Any, run_id: str) -> int:
    """Bytes the run's keys take in Redis (``MEMORY USAGE`` of each)."""
    total = 0
    keys = list(client.scan_iter(match=f"sage:run:{run_id}*", count=5000))
    for start in range(0, len(keys), 5000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 5000]:
            pipe.memory_usage(key, samples=0)
        total += sum(v or 0 for v in pipe.execute())
    return total


def deploy_encoding(client: Any, run_id: str) -> None:
    """Encode the run's keys as under ``deploy/redis.conf``: set its
    ``hash-max-ziplist-value``, then DUMP and RESTORE each key (with its TTL), which
    encodes it anew under the setting."""
    client.config_set("hash-max-ziplist-value", "1024")
    keys = list(client.scan_iter(match=f"sage:run:{run_id}*", count=5000))
    for start in range(0, len(keys), 5000):
        chunk = keys[start : start + 5000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.dump(key)
            pipe.pttl(key)
        found = pipe.execute()
        for key, data, ttl in zip(chunk, found[::2], found[1::2], strict=True):
            if data is not None:
                pipe.restore(key, max(0, ttl), data, replace=True)
        pipe.execute()


def local_start(argv: list[str], env: dict[str, str]) -> Timing:
    """``--local`` until it says the run is submitted; then stopped (its workers with it)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,  # without --json the person's output, "submitted run" too
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    peak = 0.0
    tail: list[bytes] = []
    for line in proc.stdout:
        tail = [*tail[-20:], line]
        if b"submitted run" in line:
            break
    seconds = time.perf_counter() - start
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak = next(int(x.split()[1]) / 1024 for x in status.splitlines() if x.startswith("VmHWM"))
    except (OSError, StopIteration):
        pass
    os.killpg(proc.pid, signal.SIGTERM)  # as Ctrl-C (a background job ignores SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if not any(b"submitted run" in line for line in tail):
        raise SystemExit("--local never submitted:\n" + b"".join(tail).decode())
    return Timing(seconds, peak, 0, b"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--levels", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each command (the best)")
    parser.add_argument("--polls", type=int, default=10, help="--wait refreshes timed")
    parser.add_argument("--only", default="", help="comma-separated rows to time")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (print it)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        if args.child[0] == "networkx":
            networkx_child(args.child[1])
        elif args.child[0] == "follow":
            follow_child(args.child[1], args.child[2], int(args.child[3]))
        return
    only = set(filter(None, args.only.split(",")))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop Redis on the way out
    tmp = Path(tempfile.mkdtemp(prefix="sage-bench-commands-"))
    server = Redis(tmp)
    pool = launcher()
    try:
        bench(args, only, tmp, server, pool)
    finally:
        pool.terminate()
        server.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


class _Timer:
    """Commands timed as processes, each paired with a networkx run just before it."""

    def __init__(self, pool: Any, env: dict[str, str], baseline: list[str], rounds: int):
        self.pool, self.env, self.baseline, self.rounds = pool, env, baseline, rounds
        self.nx_runs: list[Timing] = []
        #: each row's networkx time: the best of the runs just before each of its own
        self.beside: dict[str, float] = {}
        self.adjacent = 0.0  # the networkx time of the command timed last
        self.rows: list[tuple[str, Timing, str]] = []

    def networkx(self) -> Timing:
        self.nx_runs.append(self.pool.apply(timed, (self.baseline, self.env)))
        return self.nx_runs[-1]

    def best(self, argv: list[str], ok: tuple[int, ...] = (0,), rounds: int = 0) -> Timing:
        """The best of ``rounds`` (default: the bench's) runs of ``argv``, each right after
        a networkx run."""
        pairs = [
            (self.networkx(), self.pool.apply(timed, (argv, self.env, ok)))
            for _ in range(rounds or self.rounds)
        ]
        self.adjacent = min(nx.seconds for nx, _ in pairs)
        return min((t for _, t in pairs), key=lambda t: t.seconds)

    def row(self, name: str, timing: Timing, note: str = "") -> None:
        self.rows.append((name, timing, note))
        self.beside[name] = self.adjacent
        ratio = timing.seconds / self.adjacent
        print(
            f"  {name:<22} {timing.seconds:7.2f} s {ratio:6.2f}x {timing.peak_mb:6.0f} MB "
            f"(networkx {self.adjacent:.2f} s) {note}"
        )


def bench(args: argparse.Namespace, only: set[str], tmp: Path, server: Redis, pool: Any) -> None:
    raw = make_index(args.tickets, args.levels)
    edges = sum(len(t["dependencies"]) for t in raw["tickets"])
    ids = [t["id"] for t in raw["tickets"]]
    repo = make_repo(tmp, raw)
    del raw
    index = str(repo / ".sage" / "tickets" / "index.json")
    env = {**os.environ, "SAGE_BROKER_URL": server.url, "PYTHONPATH": str(ROOT)}
    env.pop("SAGE_RESULT_BACKEND", None)
    submit = [str(BIN / "sage-submit"), "--repo", str(repo)]
    me = [sys.executable, __file__, "--child"]
    print(f"{args.tickets} tickets, {edges} dependencies, {args.levels} levels")

    timer = _Timer(pool, env, [*me, "networkx", index], args.rounds)
    best, row, rows, beside = timer.best, timer.row, timer.rows, timer.beside

    def want(name: str) -> bool:
        return not only or name in only

    if want("dry-run"):
        t = best([*submit, "--dry-run"])
        row("dry-run", t, f"({t.stdout.count(NL)} lines)")
    if want("dry-run --json"):
        t = best([*submit, "--dry-run", "--json"])
        json.loads(t.stdout)
        row("dry-run --json", t, f"({len(t.stdout) / MB:.1f} MB of JSON)")
    if want("check"):
        t = best([*submit, "check", "--repo", str(repo)], ok=(0, 3))
        row("check", t)
    sub = best([*submit, "--json"], rounds=1)
    run_id = json.loads(sub.stdout)["run_id"]
    if want("submit"):
        row("submit", sub)
    stored = run_memory(server.client, run_id)
    finish_tickets(server.url, run_id, ids[: len(ids) // 2], run_done=False)
    if want("--wait progress"):
        t = best([*me, "follow", server.url, run_id, str(args.polls)])
        row("--wait progress", t, f"({args.polls} refreshes, half done)")
    finish_tickets(server.url, run_id, ids[len(ids) // 2 :], run_done=True)
    finished = run_memory(server.client, run_id)
    if want("status"):
        t = best([*submit, "status", run_id])
        row("status", t, f"({t.stdout.count(NL)} lines)")
    if want("status --json"):
        t = best([*submit, "status", run_id, "--json"])
        json.loads(t.stdout)
        row("status --json", t, f"({len(t.stdout) / MB:.1f} MB of JSON)")
    if want("report --html"):
        page = tmp / "report.html"
        t = best([*submit, "report", run_id, "--html", str(page)])
        row("report --html", t, f"({page.stat().st_size / MB:.1f} MB page)")
    if want("--local start"):
        timer.adjacent = timer.networkx().seconds
        t = local_start([*submit, "--local"], env)
        row("--local start", t, "(until the run is submitted)")

    print()
    _table(rows, beside, timer.nx_runs)
    _redis_size(server, run_id, args.tickets, stored, finished)


def _table(
    rows: list[tuple[str, Timing, str]], beside: dict[str, float], nx_runs: list[Timing]
) -> None:
    """Every command's time against its own networkx runs, and the goal it meets."""
    base = min(nx_runs, key=lambda t: t.seconds)
    print(
        f"{'command':<22} {'seconds':>8} {'networkx s':>10} {'x networkx':>11} {'peak MB':>8}  goal"
    )
    print(
        f"{'networkx':<22} {base.seconds:8.2f} {base.seconds:10.2f} {1:11.2f} {base.peak_mb:8.0f}"
    )
    for name, t, _ in rows:
        ratio = t.seconds / beside[name]
        goal = GOAL.get(name, 1.0)
        met = ratio <= goal and t.peak_mb < MEMORY_GOAL_MB
        print(
            f"{name:<22} {t.seconds:8.2f} {beside[name]:10.2f} {ratio:11.2f} {t.peak_mb:8.0f}  "
            f"<= {goal}x, < {MEMORY_GOAL_MB} MB: {'met' if met else 'MISSED'}"
        )


def _redis_size(server: Redis, run_id: str, n: int, stored: int, finished: int) -> None:
    """The run's size in Redis as submitted and finished, then under the deploy config."""
    met = max(stored, finished) / MB < REDIS_GOAL_MB
    print(
        f"run in Redis (default settings): {stored / MB:.0f} MB submitted "
        f"({stored / n:,.0f} bytes a ticket), {finished / MB:.0f} MB finished "
        f"({finished / n:,.0f} bytes a ticket); goal < {REDIS_GOAL_MB} MB: "
        f"{'met' if met else 'MISSED'}"
    )
    deploy_encoding(server.client, run_id)
    deployed = run_memory(server.client, run_id)
    print(
        f"run in Redis (deploy/redis.conf's hash-max-ziplist-value 1024): "
        f"{deployed / MB:.0f} MB finished ({deployed / n:,.0f} bytes a ticket)"
    )


if __name__ == "__main__":
    main()
