"""End-to-end overhead: no-op tickets through sage-tasks against raw Celery chords of no-op tasks.

    python bench/e2e.py [--tickets 2000] [--batches 200] [--quick] [--command true,file,newfile]

Everything runs in one go on one private ``redis-server`` (a fresh database
for each contender: FLUSHALL between them, with their workers stopped):

* raw plumbing: the git loop of ``bench/commit.py`` (``Raw``: four git
  processes a commit), 200 commits, three times before and three times after
  the rest (the median counts: one round moves a lot on a busy machine); the
  commit queue is the one serial resource, so this is the ceiling;
* raw chords: a minimal Celery app with the same settings style as
  sage-tasks (JSON, late acks, prefetch 1, started states, task events) and a
  no-op pair chained like ours, ``raw.run | raw.commit``, in one chord per
  level of the same sizes; each chord's body (on the commit queue) sends the
  next. Served by ``celery worker`` processes (``tickets`` concurrency 2,
  commit queue concurrency 1), timed from the first send to the last body.
  Run once before and once after sage-tasks; the mean is the baseline;
* sage-tasks: a generated index of N tickets in B levels (each ticket of a
  level depends on one ticket of the level before) in a real repository,
  two ``sage-worker tickets --concurrency 1`` and ``sage-worker commit``, and
  ``sage-submit --wait --json``. The ticket's command is ``true`` (the
  no-op ticket: its commit records only the ticket's new state; the target,
  at least 40% of the raw plumbing rate, is set for it), or rewrites the one
  small file of its position in the level (``file``: a real one-line patch,
  applied by git; the tree stays as wide as a level), or adds a new file
  (``newfile``: the tree grows by a file a ticket, and so does the cost of
  every fresh worktree). The default runs ``true`` then ``file``.

For each run a thread samples the queue lists (and kombu's ``unacked`` hash)
and ``INFO memory`` every 50 ms: the largest message and the peak memory.
After each sage-tasks run: the keys left (``DBSIZE``), those without a TTL
by key shape, where the time went, warnings and errors in the worker logs,
and the correctness checks (every ticket COMPLETED, exactly one commit each).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
TARGET_SHARE = 0.40
PLUMBING_COMMITS = 200
TICKET_QUEUE = "tickets"
#: kombu's Redis transport keeps a priority's messages in ``<queue>\x06\x16<pri>``
PRIORITY_SEP = "\x06\x16"

# -- the raw Celery contender ---------------------------------------------------
#
# ``celery -A e2e worker`` (run with this folder on PYTHONPATH) imports this
# module and serves ``app``; the benchmark itself builds its own instance.


def level_sizes(n: int, b: int) -> list[int]:
    """``n`` tickets over ``b`` levels, as even as it goes (the first levels take the rest)."""
    base, extra = divmod(n, b)
    return [base + (1 if i < extra else 0) for i in range(b)]


def ticket_id(level: int, j: int) -> str:
    return f"L{level:04d}-{j:04d}"


def raw_chord(app: Any, tag: str, index: int, n: int, b: int, queue: str) -> None:
    """Send level ``index``'s chord: ``raw.run | raw.commit`` a ticket, body ``raw.batch_done``."""
    from celery import chord, group

    header = group(
        app.signature("raw.run", args=(tag, ticket_id(index, j)), immutable=True)
        | app.signature("raw.commit", args=(tag, ticket_id(index, j)), queue=queue)
        for j in range(level_sizes(n, b)[index])
    )
    body = app.signature(
        "raw.batch_done", args=(tag, index, n, b, queue), queue=queue, immutable=True
    )
    chord(header)(body)


def make_raw_app(url: str) -> Any:
    """A minimal Celery app, configured like sage-tasks' where it costs per task."""
    from celery import Celery

    app = Celery("bench_raw", broker=url, backend=url)
    app.conf.update(
        accept_content=["json"],
        result_accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": 4200},
        result_expires=7 * 24 * 3600,
        result_extended=True,
        task_track_started=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue=TICKET_QUEUE,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="raw.run", acks_late=True, shared=False)
    def noop_run(tag: str, tid: str) -> dict[str, str]:
        return {"ticket": tid, "outcome": "ok"}

    @app.task(name="raw.commit", acks_late=True, shared=False)
    def noop_commit(result: Any, tag: str, tid: str) -> dict[str, str]:
        return {"ticket": tid, "state": "COMPLETED"}

    @app.task(name="raw.batch_done", acks_late=True, shared=False)
    def batch_done(tag: str, index: int, n: int, b: int, queue: str) -> bool:
        if index + 1 < b:
            raw_chord(app, tag, index + 1, n, b, queue)
            return False
        import redis

        redis.Redis.from_url(url).set(f"bench:raw:{tag}:done", repr(time.time()), ex=3600)
        return True

    return app


app = make_raw_app(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))

# -- processes --------------------------------------------------------------------


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def group_cpu(pgid: int) -> float:
    """CPU seconds of a process group's live members and the children they waited for."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid pgrp ... utime(12) stime cutime cstime
        if int(fields[2]) == pgid:
            total += sum(int(x) for x in fields[11:15])
    return total / _CLK_TCK


def redis_cpu(r: Any) -> float:
    """CPU seconds the Redis server has used (all its threads)."""
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class Procs:
    """Processes started in their own sessions, logging to files; all killed at ``stop``."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
        log.close()

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, name: str, chars: int = 3000) -> str:
        return self.log(name)[-chars:]

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # pool children too
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def worker_argv(queue: str, concurrency: int, hostname: str) -> list[str]:
    """The raw workers get the options ``sage-worker`` gives its Celery workers."""
    return [
        str(BIN / "celery"), "-A", "e2e", "worker", f"--queues={queue}",
        f"--concurrency={concurrency}", f"--hostname={hostname}", "--loglevel=INFO",
        "--pool=prefork", "--without-gossip", "--without-mingle", "--task-events", "-O", "fair",
    ]  # fmt: skip


def wait_ready(url: str, nodes: list[str], procs: Procs, timeout: float = 90) -> None:
    """Until every node answers a ping (its consumer is up)."""
    from celery import Celery

    ping = Celery("bench_ping", broker=url)
    ping.conf.update(accept_content=["json"], broker_connection_retry_on_startup=True)
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        procs.check()
        for reply in ping.control.ping(destination=nodes, timeout=0.5) or []:
            seen.update(reply)
        if seen >= set(nodes):
            ping.close()
            return
    ping.close()
    raise RuntimeError(f"workers {sorted(set(nodes) - seen)} did not answer within {timeout} s")


# -- broker sampling ----------------------------------------------------------------


class Sampler(threading.Thread):
    """Every ``interval``: the queue lists, kombu's ``unacked`` hash and ``INFO memory``."""

    def __init__(self, client: Any, queues: list[str], interval: float = 0.05):
        super().__init__(name="broker-sampler", daemon=True)
        self.r = client
        self.lists = [q + s for q in queues for s in ("", *(f"{PRIORITY_SEP}{p}" for p in "369"))]
        self.interval = interval
        self.stopped = threading.Event()
        self.samples = 0
        self.max_len = 0
        self.max_item = b""
        self.max_where = ""
        self.max_memory = 0
        self.max_depth = 0
        self.error: str | None = None

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.sample()
            except Exception as exc:  # a sampler must never end the run
                self.error = repr(exc)
            self.stopped.wait(self.interval)

    def sample(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        for name in self.lists:
            pipe.lrange(name, 0, -1)
        pipe.hvals("unacked")
        pipe.info("memory")
        *lists, unacked, memory = pipe.execute()
        self.samples += 1
        self.max_memory = max(self.max_memory, int(memory["used_memory"]))
        self.max_depth = max(self.max_depth, sum(len(items) for items in lists))
        for where, items in [*zip(self.lists, lists, strict=True), ("unacked", unacked)]:
            for item in items:
                if len(item) > self.max_len:
                    self.max_len, self.max_item, self.max_where = len(item), item, where

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)

    def largest(self) -> str:
        """The largest message: size, task name and where it was seen."""
        if not self.max_len:
            return "none seen"
        try:
            data = json.loads(self.max_item)
            if self.max_where == "unacked":  # [message, exchange, routing key]
                data = data[0]
            task = data.get("headers", {}).get("task", "?")
        except (ValueError, TypeError, AttributeError, IndexError, KeyError):
            task = "?"
        where = self.max_where.replace(PRIORITY_SEP, "/pri ")
        return f"{self.max_len:,} bytes ({task}, in {where})"


def human_bytes(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.2f}{unit}" if unit != "B" else f"{n:.0f}B"
        n /= 1024
    return f"{n:.2f}G"


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def key_shape(key: str) -> str:
    """``sage:run:<id>:t:<ticket>`` -> ``sage:run:*:t:*``: ids (parts with digits) become ``*``."""
    parts = re.split(r"([:.])", UUID_RE.sub("*", key))
    return "".join("*" if p not in ":.*" and any(c.isdigit() for c in p) else p for p in parts)


@dataclass
class KeyReport:
    total: int
    no_ttl: Counter[str]
    shapes: Counter[str]

    def findings(self) -> list[str]:
        return [s for s in self.no_ttl if s.startswith(("sage:", "celery-task-meta-"))]


def key_report(client: Any) -> KeyReport:
    keys = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.ttl(k)
    ttls = pipe.execute()
    shapes = Counter(key_shape(k.decode(errors="replace")) for k in keys)
    no_ttl = Counter(
        key_shape(k.decode(errors="replace")) for k, t in zip(keys, ttls, strict=True) if t == -1
    )
    return KeyReport(int(client.dbsize()), no_ttl, shapes)


def settle(client: Any, queues: list[str], timeout: float = 15) -> None:
    """Until the queues and kombu's unacked hash are empty (the last acks are in)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        for q in queues:
            pipe.llen(q)
        pipe.hlen("unacked")
        if not any(pipe.execute()):
            return
        time.sleep(0.1)


# -- git --------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def load_commit_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_commit", HERE / "commit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: raw plumbing is timed this many times before and after the rest; the median counts
PLUMBING_ROUNDS = 3


def plumbing_rate(tmp: Path, n: int = PLUMBING_COMMITS) -> float:
    """Commits/s of ``bench/commit.py``'s raw plumbing loop in a fresh bare repository."""
    commit_bench = load_commit_bench()
    work = Path(tempfile.mkdtemp(prefix="plumbing-", dir=tmp))
    try:
        repo = commit_bench.make_repo(work / "repo.git", 1)
        raw = commit_bench.Raw(repo, work)
        start = time.perf_counter()
        for i in range(n):
            raw.commit(i)
        elapsed = time.perf_counter() - start
        raw.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return n / elapsed


#: ticket commands (shell builtins only, so the command's own cost stays out of the way)
#: the ticket the issue's target is about: a no-op (its commit records only the new state)
TARGET_MODE = "true"
MODES = {
    # rewrite the one file of the ticket's position in its level: a real one-line patch,
    # and the tree stays as small as a level is wide
    "file": 'printf "%s\\n" "$SAGE_TICKET_ID" > out/s{slot:04d}.txt',
    # no change at all: an empty patch
    "true": "true",
    # a new file per ticket: the tree grows by one file a ticket, so each fresh
    # worktree costs more than the one before (the whole run grows with N squared)
    "newfile": 'printf "%s\\n" "$SAGE_TICKET_ID" > "out/$SAGE_TICKET_ID.txt"',
}
MODE_NAMES = {"file": "one-line file", "true": "run: true", "newfile": "new file each"}


def make_index(n: int, b: int, mode: str) -> dict[str, Any]:
    """N tickets in B levels; each depends on the ticket at its position in the level before."""
    tickets: list[dict[str, Any]] = []
    sizes = level_sizes(n, b)
    for level, size in enumerate(sizes):
        for j in range(size):
            deps = [ticket_id(level - 1, j % sizes[level - 1])] if level else []
            tickets.append(
                {
                    "id": ticket_id(level, j),
                    "title": f"no-op {level}/{j}",
                    "state": "UNPROCESSED",
                    "priority": "P2",
                    "dependencies": deps,
                    "run": MODES[mode].format(slot=j),
                }
            )
    return {"version": "1.0", "tickets": tickets}


def initial_files(n: int, b: int, mode: str) -> dict[str, str | bytes]:
    if mode == "file":
        return {f"out/s{j:04d}.txt": "initial\n" for j in range(max(level_sizes(n, b)))}
    return {"out/.keep": ""} if mode == "newfile" else {}


# -- the runs ------------------------------------------------------------------------------


@dataclass
class RawResult:
    seconds: float
    largest: str
    peak_memory: int


@dataclass
class SageResult:
    mode: str
    duration_s: float
    wall_s: float
    code: int
    largest: str
    max_depth: int
    peak_sampled: int
    peak_info: str
    keys: KeyReport
    timing: list[str]
    logs: list[str]
    problems: list[str] = field(default_factory=list)
    ok_line: str = ""


def run_raw(ctx: Context, label: str) -> RawResult:
    """One run of raw chords, served by fresh ``celery worker`` processes."""
    r = ctx.redis.client()
    r.flushall()
    queue = f"commit-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BENCH_BROKER_URL": ctx.url, "PYTHONPATH": str(HERE),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    nodes = [f"raw-tickets-{label}@bench", f"raw-commit-{label}@bench"]
    ctx.procs.start(
        f"raw-tickets-{label}", worker_argv(TICKET_QUEUE, ctx.slots, nodes[0]), env, HERE
    )
    ctx.procs.start(f"raw-commit-{label}", worker_argv(queue, 1, nodes[1]), env, HERE)
    try:
        wait_ready(ctx.url, nodes, ctx.procs)
        producer = make_raw_app(ctx.url)
        tag = uuid.uuid4().hex[:12]
        done_key = f"bench:raw:{tag}:done"
        sampler = Sampler(ctx.redis.client(), [TICKET_QUEUE, queue])
        sampler.start()
        start = time.time()
        raw_chord(producer, tag, 0, ctx.n, ctx.b, queue)
        deadline = time.monotonic() + ctx.timeout
        while (done := r.get(done_key)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"raw chords did not finish in {ctx.timeout:.0f} s")
            ctx.procs.check()
            time.sleep(0.02)
        sampler.stop()
        producer.close()
        seconds = float(done) - start
        for name in (f"raw-tickets-{label}", f"raw-commit-{label}"):
            for line in log_findings(ctx.procs.log(name)):
                ctx.notes.append(f"raw chords {label}, {name}: {line}")
    finally:
        ctx.procs.stop(f"raw-tickets-{label}")
        ctx.procs.stop(f"raw-commit-{label}")
    return RawResult(seconds, sampler.largest(), sampler.max_memory)


LOG_PATTERNS = re.compile(r"ERROR|CRITICAL|WARNING|Traceback|[Rr]etry|Exception|lost")


def log_findings(text: str, limit: int = 4) -> list[str]:
    """Counts of warning/error lines in a worker log, and the first few distinct ones."""
    hits = [line.strip() for line in text.splitlines() if LOG_PATTERNS.search(line)]
    if not hits:
        return []
    shown: list[str] = []
    for line in hits:
        line = re.sub(r"^\[[^]]*: (\w+)/[^]]*\]", r"\1", line)  # drop the timestamp
        short = re.sub(r"\b[0-9a-f]{8,}\b|\b\d+(\.\d+)?\b", "#", line)[:300]
        if short not in shown:
            shown.append(short)
        if len(shown) >= limit:
            break
    return [f"{len(hits)} warning/error lines, e.g.", *(f"  {s}" for s in shown)]


def time_breakdown(client: Any, run_id: str, ids: list[str], batches: int) -> list[str]:
    """Mean per-ticket phases and the batch barrier, from the run's records in Redis."""
    pipe = client.pipeline(transaction=False)
    for tid in ids:
        pipe.hgetall(f"sage:run:{run_id}:t:{tid}")
    for i in range(batches):
        pipe.hgetall(f"sage:run:{run_id}:batch:{i}")
    replies = pipe.execute()
    recs = [{k.decode(): v.decode() for k, v in d.items()} for d in replies[: len(ids)]]
    bats = [{k.decode(): json.loads(v) for k, v in d.items()} for d in replies[len(ids) :]]

    def mean_ms(a: str, b: str) -> str:
        vals = [float(x[b]) - float(x[a]) for x in recs if x.get(a) and x.get(b)]
        return f"{1000 * statistics.fmean(vals):.0f}" if vals else "?"

    ended = sorted(float(x["ended"]) for x in recs if x.get("ended"))
    commit_gaps = [b - a for a, b in itertools.pairwise(ended)]
    by_id = {tid: rec for tid, rec in zip(ids, recs, strict=True)}
    barrier: list[float] = []  # last commit of a batch -> first ticket of the next started
    for cur, nxt in itertools.pairwise(bats):
        last = max((float(by_id[t].get("ended") or 0) for t in cur.get("tickets", [])), default=0)
        first = min((float(by_id[t].get("started") or 1e18) for t in nxt.get("tickets", [])),
                    default=0)  # fmt: skip
        if last and first < 1e18:
            barrier.append(first - last)
    lines = [
        f"per ticket (mean ms): queued->started {mean_ms('queued', 'started')}, "
        f"run task {mean_ms('started', 'ran')} (fetch, worktree, command, patch), "
        f"ran->committed {mean_ms('ran', 'ended')}",
    ]
    if commit_gaps:
        lines.append(
            f"commits: one every {1000 * statistics.fmean(commit_gaps):.1f} ms on average "
            f"(median {1000 * statistics.median(commit_gaps):.1f} ms)"
        )
    if barrier:
        lines.append(
            f"batch barrier: last commit of a batch -> first ticket of the next started: "
            f"mean {1000 * statistics.fmean(barrier):.0f} ms, "
            f"{sum(barrier):.1f} s over {len(barrier)} barriers"
        )
    return lines


def run_sage(ctx: Context, mode: str) -> SageResult:
    """One sage-tasks run of no-op tickets, on fresh workers and a flushed database."""
    r = ctx.redis.client()
    r.flushall()
    work = ctx.tmp / f"sage-{mode}"
    work.mkdir()
    from tests.support.gitrepo import make_repo

    index = make_index(ctx.n, ctx.b, mode)
    ids = [t["id"] for t in index["tickets"]]
    repo = make_repo(work / "repo", initial_files(ctx.n, ctx.b, mode), index)
    queue = f"commit-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SAGE_BROKER_URL": ctx.url, "SAGE_WORKDIR": str(work / "workdir"),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    for var in ("SAGE_RESULT_BACKEND", "SAGE_COMMIT_QUEUE", "SAGE_TICKET_QUEUE"):
        env.pop(var, None)
    # two ticket workers sharing the slots (as many as the raw baseline has), one commit worker
    names = [f"sage-tickets{i}-{mode}" for i in (1, 2)] + [f"sage-commit-{mode}"]
    nodes = [f"{name}@bench" for name in names]
    sage_worker = str(BIN / "sage-worker")
    for i in (0, 1):
        ctx.procs.start(names[i], [sage_worker, "tickets",
                                   f"--concurrency={(ctx.slots + 1 - i) // 2}",
                                   f"--hostname={nodes[i]}"],
                        {**env, "SAGE_WORKDIR": str(work / f"workdir{i + 1}")})  # fmt: skip
    ctx.procs.start(names[2], [sage_worker, "commit", "--repo", str(repo), "--commit-queue", queue,
                               f"--hostname={nodes[2]}"], env)  # fmt: skip
    try:
        wait_ready(ctx.url, nodes, ctx.procs)
        r.config_resetstat()
        peak_before = int(r.info("memory")["used_memory_peak"])
        sampler = Sampler(ctx.redis.client(), [TICKET_QUEUE, queue])
        sampler.start()
        cmd = [str(BIN / "sage-submit"), "--repo", str(repo), "--commit-queue", queue,
               "--wait", "--json"]  # fmt: skip
        groups = {"ticket workers": [ctx.procs.procs[x].pid for x in names[:2]],
                  "commit worker": [ctx.procs.procs[names[2]].pid]}  # fmt: skip
        cpu_before = {k: sum(group_cpu(p) for p in v) for k, v in groups.items()}
        cpu_before["redis-server"] = redis_cpu(r)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=ctx.timeout)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_used = {k: sum(group_cpu(p) for p in v) - cpu_before[k] for k, v in groups.items()}
        cpu_used["redis-server"] = redis_cpu(r) - cpu_before["redis-server"]
        sampler.stop()
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        cpu_used["sage-submit"] = cpu
        try:
            summary: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(
                f"sage-submit exited {proc.returncode} without a summary:\n{proc.stderr[-3000:]}"
                + "".join(f"\n== {n} ==\n{ctx.procs.tail(n)}" for n in names)
            ) from None
        settle(r, [TICKET_QUEUE, queue])
        info = r.info("memory")
        peak_info = info["used_memory_peak_human"]
        if int(info["used_memory_peak"]) <= peak_before:
            peak_info += " (not reset by CONFIG RESETSTAT on this Redis: an earlier peak)"
        timing = time_breakdown(r, summary["run_id"], ids, ctx.b)
        timing.append(
            f"sage-submit --wait itself: {cpu:.1f} s CPU over {wall:.1f} s "
            f"({cpu / wall:.0%} of a core)"
        )
        timing.append(
            f"CPU per ticket (ms, children included): {1000 * sum(cpu_used.values()) / ctx.n:.1f}"
            " = "
            + ", ".join(f"{k} {1000 * v / ctx.n:.1f}" for k, v in cpu_used.items())
            + f"; {sum(cpu_used.values()) / wall:.2f} of {os.cpu_count()} cores busy"
        )
        keys = key_report(r)
        result = SageResult(
            mode=mode,
            duration_s=float(summary["duration_s"]),
            wall_s=wall,
            code=proc.returncode,
            largest=sampler.largest(),
            max_depth=sampler.max_depth,
            peak_sampled=sampler.max_memory,
            peak_info=peak_info,
            keys=keys,
            timing=timing,
            logs=[],
        )
        if sampler.error:
            result.problems.append(f"the broker sampler failed: {sampler.error}")
        verify(result, repo, summary, ids, mode)
    finally:
        for name in names:
            ctx.procs.stop(name)
    runtimes: dict[str, list[float]] = {}
    for name in names:
        text = ctx.procs.log(name)
        for task, secs in TASK_DONE.findall(text):
            runtimes.setdefault(task, []).append(float(secs))
        for line in log_findings(text):
            result.logs.append(f"{name}: {line}")
    if runtimes:
        result.timing.append(
            "Celery task runtimes (mean ms, count): "
            + ", ".join(
                f"{task} {1000 * statistics.fmean(v):.0f} ({len(v)})"
                for task, v in sorted(runtimes.items())
            )
        )
        busy = sum(sum(v) for task, v in runtimes.items() if task != "sage.run_ticket")
        result.timing.append(
            f"commit worker busy {busy:.1f} s of {result.duration_s:.1f} s "
            f"({busy / result.duration_s:.0%}); ticket slots busy "
            f"{sum(runtimes.get('sage.run_ticket', [])) / (2 * result.duration_s):.0%}"
        )
    return result


TASK_DONE = re.compile(r"Task (sage\.\w+)\[[^]]+\] succeeded in ([0-9.]+)s")


def verify(
    result: SageResult, repo: Path, summary: dict[str, Any], ids: list[str], mode: str
) -> None:
    """Every ticket COMPLETED, one commit per ticket, and (file mode) every file there."""
    problems = result.problems
    if result.code != 0:
        problems.append(f"sage-submit exited {result.code}")
    completed = set(summary.get("completed", []))
    if completed != set(ids):
        problems.append(f"{len(set(ids) - completed)} of {len(ids)} tickets not COMPLETED")
    if summary.get("deferred") or summary.get("blocked"):
        problems.append(
            f"deferred {len(summary.get('deferred') or {})}, blocked "
            f"{len(summary.get('blocked') or [])}: {str(summary.get('deferred'))[:300]}"
        )
    branch, base = summary["branch"], summary["base"]
    trailers = git(repo, "log", "--format=%(trailers:key=Sage-Ticket,valueonly)%x00",
                   f"{base}..{branch}")  # fmt: skip
    seen = Counter(t.strip() for t in trailers.split("\0") if t.strip())
    commits = int(git(repo, "rev-list", "--count", f"{base}..{branch}"))
    twice = [t for t, c in seen.items() if c > 1]
    missing = set(ids) - set(seen)
    if twice or missing or commits != len(ids):
        problems.append(
            f"{commits} commits for {len(ids)} tickets; twice: {twice[:5]}, "
            f"missing: {sorted(missing)[:5]}"
        )
    if mode != "true":
        touching = int(git(repo, "rev-list", "--count", f"{base}..{branch}", "--", "out"))
        if touching != len(ids):
            problems.append(f"{touching} of {len(ids)} commits change a file in out/")
    if mode == "newfile":
        files = git(repo, "ls-tree", "--name-only", f"{branch}:out").split()
        if len(files) != len(ids) + 1:  # and out/.keep
            problems.append(f"{len(files) - 1} ticket files in out/ for {len(ids)} tickets")
    if mode == "file":
        last = {int(t[-4:]): t for t in ids}  # the last level's ticket of each position
        for j, tid in last.items():
            text = git(repo, "show", f"{branch}:out/s{j:04d}.txt").strip()
            if text != tid:
                problems.append(f"out/s{j:04d}.txt holds {text!r}, not {tid!r}")
    if not problems:
        result.ok_line = (
            f"{len(completed)}/{len(ids)} COMPLETED, {commits} commits, one per ticket"
            + (", each with its file change" if mode != "true" else "")
        )


# -- the whole benchmark ----------------------------------------------------------------------


@dataclass
class Context:
    tmp: Path
    redis: Any
    procs: Procs
    n: int
    b: int
    timeout: float
    slots: int = 2
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        url: str = self.redis.url
        return url


def report(ctx: Context, plumbing: list[float], raws: list[RawResult],
           sages: list[SageResult]) -> tuple[bool, bool]:  # fmt: skip
    """Print the table; (every correctness check passed, the target is met)."""
    n = ctx.n
    raw_s = statistics.fmean(r.seconds for r in raws)
    plumb = statistics.median(plumbing)
    print()
    print(f"{'':40} {'seconds':>8} {'tickets/s':>10} {'ms/ticket':>10}")
    for label, r in zip(("before", "after"), raws, strict=False):
        print(f"{'raw Celery chords, ' + label:40} {r.seconds:8.2f} {n / r.seconds:10.1f} "
              f"{1000 * r.seconds / n:10.2f}")  # fmt: skip
    print(f"{'raw Celery chords, mean':40} {raw_s:8.2f} {n / raw_s:10.1f} {1000 * raw_s / n:10.2f}")
    for s in sages:
        what = MODE_NAMES[s.mode]
        for how, secs in (("duration_s", s.duration_s), ("wall", s.wall_s)):
            print(f"{f'sage-tasks, {what} ({how})':40} {secs:8.2f} {n / secs:10.1f} "
                  f"{1000 * secs / n:10.2f}")  # fmt: skip
    print(
        f"raw git plumbing: {plumb:.1f} commits/s (median of "
        + ", ".join(f"{p:.1f}" for p in plumbing)
        + f"; {PLUMBING_COMMITS} commits each, 4 git calls a commit, "
        f"{PLUMBING_ROUNDS} rounds before and after the rest)"
    )
    met_all = _targets(n, raw_s, plumb, sages)
    for label, r in zip(("before", "after"), raws, strict=False):
        print(f"broker, raw chords {label}: largest message {r.largest}, "
              f"peak used_memory {human_bytes(r.peak_memory)} (sampled)")  # fmt: skip
    correct = all([_details(s) for s in sages])
    if ctx.notes:
        print("\nraw chord worker logs:")
        for line in ctx.notes:
            print(f"  {line}")
    return correct, met_all


def _targets(n: int, raw_s: float, plumb: float, sages: list[SageResult]) -> bool:
    """Each mode's rate against raw chords and plumbing; whether the target mode meets it."""
    met_all = True
    for s in sages:
        rate = n / s.duration_s
        share = rate / plumb
        print(
            f"sage-tasks ({s.mode}): {rate:.1f} tickets/s = {rate / (n / raw_s):.0%} of raw "
            f"chords, overhead {1000 * (s.duration_s - raw_s) / n:.1f} ms/ticket over raw chords, "
            f"{share:.0%} of raw plumbing"
        )
        if s.mode != TARGET_MODE:
            print(f"  (for reference: the target is set for the no-op ticket, {TARGET_MODE!r})")
            continue
        met = share >= TARGET_SHARE
        met_all &= met
        print(f"  target: >= {TARGET_SHARE:.0%} of raw plumbing -> {'met' if met else 'MISSED'}")
    return met_all


def _details(s: SageResult) -> bool:
    """One mode's broker, keys, timing, logs and correctness; whether it was correct."""
    print(f"\n== sage-tasks, {s.mode} ==")
    print(f"broker peak memory: used_memory_peak_human {s.peak_info}; "
          f"sampled max used_memory {human_bytes(s.peak_sampled)}")  # fmt: skip
    print(f"largest message: {s.largest}; deepest queues: {s.max_depth} messages")
    no_ttl = sum(s.keys.no_ttl.values())
    print(f"keys left: {s.keys.total} (DBSIZE), {no_ttl} without TTL"
          + (": " + ", ".join(f"{k} ({c})" for k, c in sorted(s.keys.no_ttl.items()))
             if no_ttl else ""))  # fmt: skip
    print("  by shape: " + ", ".join(f"{k} ({c})" for k, c in sorted(s.keys.shapes.items())))
    findings = s.keys.findings()
    if findings:
        print(f"  FINDING: sage-tasks or Celery result keys without TTL: {', '.join(findings)}")
    for line in s.timing:
        print(line)
    print("worker logs: " + ("clean" if not s.logs else ""))
    for line in s.logs:
        print(f"  {line}")
    if s.problems:
        print("correctness: FAILED")
        for p in s.problems:
            print(f"  {p}")
        return False
    print(f"correctness: {s.ok_line}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=2000, help="tickets (default 2000)")
    parser.add_argument("--batches", type=int, default=200, help="levels/batches (default 200)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 tickets, 20 batches")
    parser.add_argument(
        "--command",
        default="true,file",
        help="ticket commands, comma-separated, one sage-tasks run each: true (a no-op "
        "ticket: the target is set for it), file (rewrite one small file), newfile (a new "
        "file each: the tree grows), both (true,file: the default)",
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=2,
        help="ticket slots: two sage-tasks ticket workers share them, one raw worker has all "
        "of all (default 2)",
    )
    args = parser.parse_args()
    if args.slots < 2:
        parser.error("--slots takes a number of at least 2")
    n, b = (200, 20) if args.quick else (args.tickets, args.batches)
    b = max(1, min(b, n))
    modes = ["true", "file"] if args.command == "both" else args.command.split(",")
    if not modes or set(modes) - set(MODES):
        parser.error(f"--command takes {', '.join(MODES)} or both, comma-separated")

    sys.path.insert(0, str(ROOT))
    from sage_tasks.cli.local import terminate_as_interrupt
    from tests.support.redis_server import RedisServer

    tmp = Path(tempfile.mkdtemp(prefix="sage-bench-e2e-"))
    server = RedisServer(tmp / "redis")
    procs = Procs(tmp)
    ctx = Context(tmp, server, procs, n, b, timeout=120 + 2.0 * n, slots=args.slots)
    correct = met = False
    try:
        with terminate_as_interrupt():
            server.start()
            versions = (
                f"git {git(ROOT, '--version').split()[-1]}, "
                f"redis {server.client().info('server')['redis_version']}, "
                f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
            )
            print(f"{n} no-op tickets in {b} batches of ~{n // b}, two ticket workers of "
                  f"{args.slots} slots in all, "
                  f"one commit worker; {versions}", flush=True)  # fmt: skip
            plumbing = [plumbing_rate(tmp) for _ in range(PLUMBING_ROUNDS)]
            raws = [run_raw(ctx, "before")]
            print(f"raw chords (before): {raws[0].seconds:.2f} s", flush=True)
            sages = []
            for mode in modes:
                sages.append(run_sage(ctx, mode))
                print(f"sage-tasks ({mode}): {sages[-1].duration_s:.2f} s", flush=True)
            raws.append(run_raw(ctx, "after"))
            plumbing += [plumbing_rate(tmp) for _ in range(PLUMBING_ROUNDS)]
            correct, met = report(ctx, plumbing, raws, sages)
            print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        procs.stop_all()
        server.stop(kill=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if not correct:
        sys.exit(2)
    if not met and not args.quick:
        sys.exit(1)


if __name__ == "__main__":
    main()
