"""The fault tier: faults inflicted for real on real processes.

Every test runs its own redis-server and ``sage-worker`` processes, kills
something the way a crash, an OOM killer or a lost host would, and checks the
contract: every ticket COMPLETED with exactly one commit each (nothing half
applied, nothing twice), or, where the contract says so, a clear exit 3 and a
clean resume. Ticket commands log each run outside the repository, so "not
run again" is checked against what really ran, not against the run's record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sage_tasks.config import Settings
from sage_tasks.store import keys
from sage_tasks.store.runstate import RunInfo, RunStore
from sage_tasks.work import committer
from sage_tasks.work.runtime import Runtime
from tests.support.builders import ticket
from tests.support.faults import (
    Background,
    check_history,
    head,
    kill_host,
    pool_deaths,
    run_counts,
    runs,
    traced,
)
from tests.support.fleet import Fleet, unique_queue
from tests.support.gitrepo import INDEX, git, make_patch, make_repo
from tests.support.procs import (
    alive,
    bin_path,
    descendants,
    kill_groups,
    proc_state,
    wait_until,
)
from tests.support.redis_server import RedisServer
from tests.support.runs import states, ticket_log, wait_for_run, wait_state

pytestmark = pytest.mark.slow


class Lab:
    """One test's world: a redis-server, a fleet on it, a repository, a trace file."""

    def __init__(self, root: Path):
        self.root = root
        self.server = RedisServer(root / "redis")
        self.server.start()
        self.trace = root / "trace.log"
        self.queue = unique_queue()
        self.fleets: list[Fleet] = []
        self.background: list[Background] = []
        self.repo: Path | None = None

    @property
    def client(self) -> Any:  # redis-py types replies as "value or awaitable"
        return self.server.client()

    def fleet(self, **env: str) -> Fleet:
        f = Fleet(self.root / f"fleet{len(self.fleets)}", self.server, **env)
        self.fleets.append(f)
        return f

    def make_repo(
        self, tickets: list[dict[str, Any]], files: dict[str, str | bytes] | None = None
    ) -> Path:
        index = {"version": "1.0", "tickets": tickets}
        self.repo = make_repo(self.root / "repo", files or {}, index)
        return self.repo

    def submit(self, fleet: Fleet, *args: str, **env: str) -> Background:
        assert self.repo is not None
        bg = Background(fleet, self.repo, *args, queue=self.queue, **env)
        self.background.append(bg)
        return bg

    def logs(self) -> str:
        return "\n".join(f.logs() for f in self.fleets)

    def close(self) -> None:
        for bg in self.background:
            bg.kill()
        for f in self.fleets:
            f.stop()
        # ticket commands orphaned by a killed pool process lead their own groups
        kill_groups([r.pid for r in runs(self.trace)], grace=None)
        self.server.stop(kill=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    world = Lab(tmp_path)
    try:
        yield world
    finally:
        world.close()


def completed_once(lab: Lab, data: dict[str, Any], ids: list[str]) -> None:
    """The run's JSON and its branch agree: every ticket COMPLETED, one whole commit each."""
    assert lab.repo is not None
    assert sorted(data["completed"]) == sorted(ids), data
    assert data["deferred"] == {} and data["blocked"] == []
    branch = data["branch"]
    assert sorted(check_history(lab.repo, "main", branch)) == sorted(ids)
    assert set(states(lab.repo, branch).values()) == {"COMPLETED"}
    assert head(lab.repo, branch) == data["head"]


# -- 1. a pool process dies under a ticket ------------------------------------------


def test_a_killed_pool_process_has_its_ticket_redelivered_at_once_and_run_again(
    lab: Lab,
) -> None:
    # heartbeats 5 s apart: a stale heartbeat would take 20 s, so a quick re-run
    # shows the redelivery saw the dead process, not an old heartbeat
    fleet = lab.fleet(SAGE_HEARTBEAT_INTERVAL="5", SAGE_HEARTBEAT_TIMEOUT="20")
    ids = ["K1", "K2", "K3"]
    tickets = [ticket("K1", traced("K1", lab.trace, first_sleep="60", sleep="0.2"))]
    tickets += [ticket(t, traced(t, lab.trace, sleep="0.5")) for t in ids[1:]]
    repo = lab.make_repo(tickets)
    fleet.start_tickets("tickets", concurrency=2)
    fleet.start_commit(repo, lab.queue)
    bg = lab.submit(fleet, "--wait", "--json")
    assert wait_until(lambda: run_counts(lab.trace).get("K1") == 1, timeout=30), lab.logs()
    first = next(r for r in runs(lab.trace) if r.ticket == "K1")
    worker = fleet.procs["tickets"].pid
    assert first.ppid in descendants(worker) and first.ppid != worker

    os.kill(first.ppid, signal.SIGKILL)  # what the OOM killer does
    killed_at = time.monotonic()
    assert wait_until(lambda: run_counts(lab.trace).get("K1") == 2, timeout=30), lab.logs()
    rerun_after = time.monotonic() - killed_at
    res = bg.result(timeout=60)

    assert res.code == 0, res.stderr + lab.logs()
    assert res.data is not None
    completed_once(lab, res.data, ids)
    second = [r for r in runs(lab.trace) if r.ticket == "K1"][1]
    assert second.ppid != first.ppid and second.ppid in descendants(worker)
    assert run_counts(lab.trace) == {"K1": 2, "K2": 1, "K3": 1}
    row = next(t for t in res.data["tickets"] if t["id"] == "K1")
    assert row["attempts"] == 2
    # the worker notices a dead pool process on its next pool check (every 5 s)
    assert rerun_after < 9, f"K1 ran again {rerun_after:.1f} s after its pool process died"
    # the first run's command (sleeping 60 s in its own session) did not outlive its redelivery
    assert wait_until(lambda: not alive(first.pid), timeout=5), "the orphaned command survived"


def test_a_ticket_whose_pool_process_is_killed_three_times_is_deferred_as_worker_lost(
    lab: Lab,
) -> None:
    fleet = lab.fleet()
    repo = lab.make_repo(
        [
            ticket("P1", traced("P1", lab.trace, sleep="60")),  # dies under every run
            ticket("P2", traced("P2", lab.trace, sleep="0.1"), ["P1"]),
            ticket("P3", traced("P3", lab.trace, sleep="0.1")),
        ]
    )
    fleet.start_tickets("tickets", concurrency=2)
    fleet.start_commit(repo, lab.queue)
    bg = lab.submit(fleet, "--wait", "--json")
    for kill in range(1, 4):
        assert wait_until(lambda n=kill: run_counts(lab.trace).get("P1") == n, timeout=30), (
            lab.logs()
        )
        os.kill([r for r in runs(lab.trace) if r.ticket == "P1"][-1].ppid, signal.SIGKILL)
    res = bg.result(timeout=60)

    assert res.code == 1, res.stderr + lab.logs()
    assert res.data is not None
    assert res.data["completed"] == ["P3"]
    assert "worker lost" in res.data["deferred"]["P1"] and "3 times" in res.data["deferred"]["P1"]
    assert res.data["blocked"] == ["P2"]
    assert run_counts(lab.trace) == {"P1": 3, "P3": 1}  # a death is no retry of the command
    assert states(repo, res.data["branch"]) == {
        "P1": "DEFERRED",
        "P2": "UNPROCESSED",
        "P3": "COMPLETED",
    }
    assert sorted(ticket_log(repo, res.data["branch"])) == ["P1", "P3"]


# -- 2. a whole ticket worker host dies ------------------------------------------------


def test_a_dead_hosts_tickets_are_redelivered_after_the_visibility_timeout_and_finish_elsewhere(
    lab: Lab,
) -> None:
    vt = 8.0
    fleet = lab.fleet(SAGE_VISIBILITY_TIMEOUT=str(vt), SAGE_TICKET_TIMEOUT="6")
    ids = ["H1", "H2", "H3", "H4"]
    # on host A a ticket would take a minute (it dies long before); elsewhere a moment
    repo = lab.make_repo([ticket(t, traced(t, lab.trace, sleep="${SLOW:-0.3}")) for t in ids])
    fleet.start_tickets("hostA", concurrency=2, SLOW="60")
    fleet.start_commit(repo, lab.queue)
    bg = lab.submit(fleet, "--wait", "--json")
    run_id = wait_for_run(lab.client)

    def on_a() -> list[str]:
        return [r.ticket for r in runs(lab.trace) if r.workdir == "work-hostA"]

    assert wait_until(lambda: len(on_a()) == 2, timeout=30), lab.logs()
    fleet.start_tickets("hostB", concurrency=2)
    # host B is up and working (it takes the two tickets host A had no room for)
    assert wait_until(lambda: len(runs(lab.trace)) >= 4, timeout=30), lab.logs()
    lost = sorted(on_a())
    killed = kill_host(fleet, "hostA")
    killed_at = time.monotonic()
    assert wait_until(lambda: not any(alive(pid) for pid in killed), timeout=10)

    res = bg.result(timeout=90)
    recovered_after = time.monotonic() - killed_at
    assert res.code == 0, res.stderr + lab.logs()
    assert res.data is not None
    completed_once(lab, res.data, ids)
    hosts = {t["id"]: t["host"] for t in res.data["tickets"]}
    assert all(h.startswith("hostB@") for h in hosts.values()), hosts
    for tid in lost:
        assert [r.workdir for r in runs(lab.trace) if r.ticket == tid] == [
            "work-hostA",
            "work-hostB",
        ]
        row = next(t for t in res.data["tickets"] if t["id"] == tid)
        assert row["attempts"] == 2
        assert lab.client.hget(f"sage:run:{run_id}:t:{tid}", "deaths") == b"1"
    # the visibility timeout counts from host A's delivery, a few seconds before the kill
    assert recovered_after < vt + 10, f"recovered {recovered_after:.1f} s after the kill"
    # host A's worktrees were left behind where it died; they did no harm, and
    # host A back on its feet clears them away before it takes work again
    leftovers = fleet.root / "work-hostA" / "worktrees"
    assert any(p.is_dir() for p in leftovers.iterdir())
    fleet.start_tickets("hostA", concurrency=2)
    assert wait_until(lambda: fleet.log("hostA").count(" ready.") == 2, timeout=30)
    assert not any(p.is_dir() for p in leftovers.iterdir()), list(leftovers.iterdir())


# -- 3. the commit worker dies, again and again, mid-commit included ------------------------


def test_a_commit_worker_killed_again_and_again_never_leaves_half_a_ticket_or_a_duplicate(
    lab: Lab,
) -> None:
    fleet = lab.fleet(SAGE_VISIBILITY_TIMEOUT="8", SAGE_TICKET_TIMEOUT="6", SAGE_LOCK_LEASE="2")
    ids = ["C1", "C2", "C3"]
    repo = lab.make_repo([ticket(t, traced(t, lab.trace, sleep="0.2")) for t in ids])
    fleet.start_tickets("tickets", concurrency=2)
    fleet.start_commit(repo, lab.queue, name="commit1", SAGE_FAULT="before-update-ref")
    bg = lab.submit(fleet, "--wait", "--json")
    run_id = wait_for_run(lab.client)
    branch = f"sage/run-{run_id}"

    def dies(name: str, times: int = 2) -> None:
        ok = wait_until(lambda: pool_deaths(fleet, name) >= times, timeout=60)
        assert ok, lab.logs()

    # dies after writing the commit object, before the branch moves: nothing lands
    dies("commit1")
    base = head(repo, "main")
    assert head(repo, branch) == base
    kill_host(fleet, "commit1")

    # dies holding the commit lock: the next holder waits out the lease
    fleet.start_commit(repo, lab.queue, name="commit2", SAGE_FAULT="commit-locked")
    dies("commit2")
    assert head(repo, branch) == base
    kill_host(fleet, "commit2")

    # dies right after the branch moved, before the run's record knows: the
    # redelivery finds the commit on the branch and does not make another
    fleet.start_commit(repo, lab.queue, name="commit3", SAGE_FAULT="after-update-ref")
    dies("commit3", 3)
    assert wait_until(lambda: len(ticket_log(repo, branch)) >= 1, timeout=30)
    landed = check_history(repo, base, branch)
    kill_host(fleet, "commit3")

    fleet.start_commit(repo, lab.queue, name="commit4")
    res = bg.result(timeout=120)
    assert res.code == 0, res.stderr + lab.logs()
    assert res.data is not None
    completed_once(lab, res.data, ids)
    assert ticket_log(repo, branch)[: len(landed)] == landed
    assert run_counts(lab.trace) == {t: 1 for t in ids}
    assert "already committed" in fleet.log("commit3") + fleet.log("commit4")


# -- 4. two commit workers on one repository ----------------------------------------------


def test_two_commit_workers_on_one_queue_are_kept_apart_by_the_lock(lab: Lab) -> None:
    fleet = lab.fleet()
    ids = [f"W{i:02d}" for i in range(12)]
    repo = lab.make_repo([ticket(t, traced(t, lab.trace, sleep="0.1")) for t in ids])
    fleet.start_tickets("tickets", concurrency=3)
    fleet.start_commit(repo, lab.queue, name="commitA")
    fleet.start_commit(repo, lab.queue, name="commitB")
    fleet.wait_ready("tickets", "commitA", "commitB")
    res = lab.submit(fleet, "--wait", "--json").result(timeout=120)
    assert res.code == 0, res.stderr + lab.logs()
    assert res.data is not None
    completed_once(lab, res.data, ids)
    logs = {name: fleet.log(name) for name in ("commitA", "commitB")}
    # both took commit tasks from the one queue; which of them writes a ticket is
    # the lock's (and group commit's) choice, but every ticket is written once
    received = re.compile(r"Task sage\.commit_ticket\[\S+\] received")
    taken = {name: len(received.findall(log)) for name, log in logs.items()}
    assert all(n > 0 for n in taken.values()), taken
    made = [m for log in logs.values() for m in re.findall(r"ticket (\S+) COMPLETED at ", log)]
    assert sorted(made) == ids, made
    # under the lock no writer ever built on a head that had moved
    assert not any("moved while committing" in log for log in logs.values())


_PAUSED_WRITER = """
import json, logging, os, signal, sys
from pathlib import Path
from sage_tasks.work import committer
from sage_tasks.config import Settings
from sage_tasks.errors import RefMoved
from sage_tasks.work.runtime import Runtime

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

class Paused(Runtime):
    def inject(self, point):
        # a stop-the-world pause (GC, swap, a frozen VM) with the commit built
        # and the ref not yet moved: every thread stops, the lease runs out
        if point == "before-update-ref" and not self.settings.fault:
            self.settings.fault = "paused once"
            os.kill(os.getpid(), signal.SIGSTOP)

url, repo, run_id, tid, result = sys.argv[1:]
rt = Paused(Settings(broker_url=url, lock_lease=1.0))
rt.serve(Path(repo))
try:
    committer.commit_ticket(rt, json.loads(result), run_id, tid)
    print(json.dumps({"first": "committed"}), flush=True)
except RefMoved as exc:
    print(json.dumps({"first": "RefMoved", "why": str(exc)}), flush=True)
    # what the task does next: retry, reading the branch again
    print(json.dumps({"retry": committer.commit_ticket(rt, json.loads(result), run_id, tid)}))
"""


def test_a_writer_whose_lease_lapsed_mid_commit_cannot_overwrite_the_next_holders_commit(
    lab: Lab,
) -> None:
    repo = lab.make_repo([ticket("A", "true"), ticket("B", "true")])
    base = head(repo, "main")
    git(repo, "branch", "sage/cas", base)
    run_id = "cas1"
    info = RunInfo(
        run_id=run_id,
        repo=str(repo.resolve()),
        repo_url=str(repo),
        branch="sage/cas",
        base=base,
        index_path=INDEX,
        commit_queue=lab.queue,
        executor=None,
        ticket_timeout=60,
        batches=1,
        tickets=2,
        to_run=2,
        created=time.time(),
        status="RUNNING",
    )
    store = RunStore(lab.client, ttl=3600)
    plan = {"batches": [["A", "B"]], "deps": {}}
    records = {t: {"state": "RAN", "title": f"ticket {t}"} for t in "AB"}
    store.create(info, json.dumps(plan), records)
    results = {}
    for tid in "AB":
        data = make_patch(repo, base, {f"out/{tid}.txt": f"{tid}\n"}, lab.root / f"work-{tid}")
        digest = hashlib.sha256(data).hexdigest()
        store.put_patch(run_id, digest, data)
        results[tid] = {"ticket": tid, "outcome": "ok", "patch": digest}

    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _PAUSED_WRITER,
            lab.server.url,
            str(repo),
            run_id,
            "A",
            json.dumps(results["A"]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: proc_state(writer.pid) == "T", timeout=30)
        # the paused writer still "holds" the lock; its lease runs out in a second
        lock_key = keys.commit_lock(info.repo)
        assert wait_until(lambda: not lab.client.exists(lock_key), timeout=10)
        other = Runtime(Settings(broker_url=lab.server.url, lock_lease=1.0))
        other.serve(repo)
        done = committer.commit_ticket(other, results["B"], run_id, "B")
        assert done == {"ticket": "B", "state": "COMPLETED"}
        assert proc_state(writer.pid) == "T"  # two "holders": only the ref's CAS stands between
        after_b = head(repo, "sage/cas")
        os.kill(writer.pid, signal.SIGCONT)
        out, err = writer.communicate(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    assert writer.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["first"] == "RefMoved", (out, err)
    assert lines[1]["retry"] == {"ticket": "A", "state": "COMPLETED"}
    assert "expired" in err or "lost" in err  # the writer learns its lease had lapsed
    # B's commit was not lost: A's landed on top of it, each whole and once
    assert check_history(repo, base, "sage/cas") == ["B", "A"]
    assert git(repo, "rev-parse", "sage/cas~1").strip() == after_b
    assert states(repo, "sage/cas") == {"A": "COMPLETED", "B": "COMPLETED"}


# -- 5. a task delivered twice ------------------------------------------------------------


def _task_meta(client: Any, name: str, ticket_id: str) -> dict[str, Any]:
    """The stored result (with its arguments) of the task ``name`` that ran for ``ticket_id``."""
    for key in client.scan_iter(match="celery-task-meta-*"):
        raw = client.get(key)
        if raw is None:
            continue
        meta: dict[str, Any] = json.loads(raw)
        if meta.get("name") == name and (meta.get("args") or [None])[-1] == ticket_id:
            return meta
    raise AssertionError(f"no stored result of {name} for {ticket_id}")


def test_a_task_delivered_twice_commits_nothing_the_second_time(lab: Lab) -> None:
    from sage_tasks.app.celery_app import make_app
    from sage_tasks.dispatch.names import TASK_COMMIT
    from sage_tasks.dispatch.producer import ticket_chain

    fleet = lab.fleet()
    ids = ["D1", "D2", "D3"]
    repo = lab.make_repo(
        [
            ticket("D1", traced("D1", lab.trace, sleep="2")),
            ticket("D2", traced("D2", lab.trace, sleep="0.1")),
            ticket("D3", traced("D3", lab.trace, sleep="0.1"), ["D1"]),
        ]
    )
    fleet.start_tickets("tickets", concurrency=2)
    fleet.start_commit(repo, lab.queue)
    bg = lab.submit(fleet, "--wait", "--json")
    run_id = wait_for_run(lab.client)
    app = make_app(Settings(broker_url=lab.server.url, commit_queue=lab.queue))

    # while D1 runs, its run_ticket -> commit_ticket chain is delivered again
    wait_state(lab.client, run_id, "D1", "RUNNING")
    in_flight = ticket_chain(app, run_id, "D1", lab.queue).apply_async()
    res = bg.result(timeout=60)
    assert res.code == 0, res.stderr + lab.logs()
    assert res.data is not None
    completed_once(lab, res.data, ids)
    assert in_flight.get(timeout=30) == {"ticket": "D1", "state": "COMPLETED"}
    branch = res.data["branch"]
    tip, order = head(repo, branch), ticket_log(repo, branch)

    # after the run: the very same commit message again (same task id and arguments) ...
    meta = _task_meta(lab.client, TASK_COMMIT, "D2")
    again = app.send_task(TASK_COMMIT, args=meta["args"], task_id=meta["task_id"], queue=lab.queue)
    assert again.get(timeout=30) == {"ticket": "D2", "state": "COMPLETED"}
    # ... a whole chain again, so the command could run a second time ...
    assert ticket_chain(app, run_id, "D3", lab.queue).apply_async().get(timeout=30) == {
        "ticket": "D3",
        "state": "COMPLETED",
    }
    # ... and a commit whose first delivery moved the branch but died before the
    # run's record knew (the git history is what stops the second commit)
    lab.client.hset(f"sage:run:{run_id}:t:D2", "state", "RAN")
    lab.client.hdel(f"sage:run:{run_id}:final", "D2")
    again = app.send_task(TASK_COMMIT, args=meta["args"], queue=lab.queue)
    assert again.get(timeout=30) == {"ticket": "D2", "state": "COMPLETED"}

    assert head(repo, branch) == tip and ticket_log(repo, branch) == order
    assert run_counts(lab.trace) == {t: 1 for t in ids}
    assert lab.client.hget(f"sage:run:{run_id}:t:D2", "state") == b"COMPLETED"
    assert "ticket D2 COMPLETED at" in fleet.log(f"commit-{lab.queue}")
    assert "(already committed)" in fleet.log(f"commit-{lab.queue}")


# -- 6. Redis restarts empty in the middle of a run ------------------------------------------


def test_a_broker_that_restarts_empty_is_reported_as_a_lost_run_and_resubmitting_resumes_it(
    lab: Lab,
) -> None:
    fleet = lab.fleet()
    ids = ["R1", "R2", "R3", "R4"]
    chain = [ticket("R1", traced("R1", lab.trace, sleep="0.2"))]
    chain += [
        ticket(t, traced(t, lab.trace, sleep="3" if t == "R3" else "0.2"), [ids[i]])
        for i, t in enumerate(ids[1:])
    ]
    repo = lab.make_repo(chain)
    fleet.start_tickets("tickets", concurrency=2)
    fleet.start_commit(repo, lab.queue)
    branch = "sage/resume"
    bg = lab.submit(fleet, "--branch", branch, "--wait", "--json")
    run_id = wait_for_run(lab.client)
    wait_state(lab.client, run_id, "R3", "RUNNING", timeout=60)

    lab.server.stop(kill=True)
    # --wait rides out a broker that does not answer for a while (longer than
    # the client's own retries) ...
    time.sleep(20)
    assert not bg.done(), bg.result().stderr
    lab.server.start()  # ... and it comes back on the same port without its data
    back_at = time.monotonic()
    res = bg.result(timeout=60)
    noticed_after = time.monotonic() - back_at
    assert res.code == 3, res.stderr + lab.logs()
    errors = [line for line in res.stderr.splitlines() if line.startswith("sage: error:")]
    assert len(errors) == 1, res.stderr
    assert run_id in errors[0] and "gone from Redis" in errors[0] and "--branch" in errors[0]
    assert "Traceback" not in res.stderr
    assert noticed_after < 10, f"--wait noticed the lost run after {noticed_after:.1f} s"

    # the workers rode out the outage (reconnected, not dead)
    for name, proc in fleet.procs.items():
        assert proc.poll() is None, f"{name} died when the broker went away:\n{fleet.log(name)}"

    done_before = {t for t, s in states(repo, branch).items() if s == "COMPLETED"}
    assert {"R1", "R2"} <= done_before
    again = fleet.submit(repo, "--branch", branch, "--wait", "--json", queue=lab.queue, timeout=90)
    assert again.code == 0, again.stderr + lab.logs()
    assert again.data is not None
    assert sorted(again.data["completed"]) == sorted(set(ids) - done_before)
    assert check_history(repo, "main", branch) == ids
    assert set(states(repo, branch).values()) == {"COMPLETED"}
    counts = run_counts(lab.trace)
    assert all(counts[t] == 1 for t in done_before), counts


# -- 7. the broker is unreachable at submit time -----------------------------------------------


class FakeBroker:
    """Something at the broker's address that is not a working Redis."""

    def __init__(self, kind: str):
        import socket
        import threading

        self.kind = kind
        self.conns: list[Any] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        if kind == "refused":  # nothing listens there
            self.sock.close()
            return
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)  # "silent": a hung server holds the connection, says nothing
            if self.kind == "not-redis":  # a web server on the broker's port
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                conn.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("wait", [False, True], ids=["submit", "submit-wait"])
@pytest.mark.parametrize("kind", ["refused", "silent", "not-redis"])
def test_an_unreachable_broker_at_submit_time_is_one_clear_line_and_exit_3_within_seconds(
    lab: Lab, kind: str, wait: bool
) -> None:
    repo = lab.make_repo([ticket("U1", traced("U1", lab.trace))])
    broker = FakeBroker(kind)
    args = ["--repo", str(repo), "--broker", broker.url] + (["--wait"] if wait else [])
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [bin_path("sage-submit"), *args],
            capture_output=True,
            text=True,
            timeout=40,
            env=lab.fleet().env(SAGE_BROKER_URL=broker.url),
        )
    finally:
        broker.close()
    took = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sage: error: broker") and f":{broker.port}" in lines[0]
    assert proc.stdout == ""
    assert took < 15, f"sage-submit took {took:.1f} s to give up"
    assert not runs(lab.trace)
    assert git(repo, "branch", "--list", "sage/*").strip() == ""


# -- 8. a batch that can no longer finish by itself ---------------------------------------------


def test_a_batch_whose_chord_state_is_gone_makes_the_run_lost_and_submitting_again_resumes_it(
    lab: Lab,
) -> None:
    fleet = lab.fleet()
    ids = ["G1", "G2", "G3"]
    repo = lab.make_repo(
        [
            ticket("G1", traced("G1", lab.trace, sleep="2")),
            ticket("G2", traced("G2", lab.trace, sleep="2")),
            ticket("G3", traced("G3", lab.trace, sleep="0.1"), ["G1", "G2"]),
        ]
    )
    fleet.start_tickets("tickets", concurrency=2)
    node = fleet.start_commit(repo, lab.queue)
    branch = "sage/chord-gone"
    bg = lab.submit(fleet, "--branch", branch, "--wait", "--json")
    run_id = wait_for_run(lab.client)
    wait_state(lab.client, run_id, "G1", "RUNNING")
    # the batch's chord counter (evicted, expired, or lost with a Redis failover)
    chord_keys = list(lab.client.scan_iter(match="celery-taskset-meta-*"))
    assert chord_keys, "the batch's chord left no state in Redis"
    lab.client.delete(*chord_keys)

    res = bg.result(timeout=90)
    assert res.code == 3, res.stderr + lab.logs()
    assert res.data is not None
    assert "chord state of batch 1 is gone" in res.data["error"], res.data
    assert "--branch" in res.data["error"]
    assert "Traceback" not in res.stderr
    assert "chord state of batch 1 is gone" in fleet.log(node)
    # what the batch committed stays; the dependent never ran
    assert states(repo, branch) == {"G1": "COMPLETED", "G2": "COMPLETED", "G3": "UNPROCESSED"}

    again = fleet.submit(repo, "--branch", branch, "--wait", "--json", queue=lab.queue, timeout=90)
    assert again.code == 0, again.stderr + lab.logs()
    assert again.data is not None
    assert again.data["completed"] == ["G3"]
    history = check_history(repo, "main", branch)
    assert sorted(history[:2]) == ["G1", "G2"] and history[2:] == ["G3"], history
    assert run_counts(lab.trace) == {t: 1 for t in ids}


def test_a_ticket_message_lost_before_any_worker_took_it_is_sent_again_and_its_batch_finished(
    lab: Lab,
) -> None:
    fleet = lab.fleet(SAGE_VISIBILITY_TIMEOUT="6", SAGE_TICKET_TIMEOUT="5")
    ids = ["M1", "M2", "M3"]
    repo = lab.make_repo(
        [
            ticket("M1", traced("M1", lab.trace, sleep="0.2")),
            ticket("M2", traced("M2", lab.trace, sleep="0.2")),
            ticket("M3", traced("M3", lab.trace, sleep="0.2"), ["M1"]),
        ]
    )
    node = fleet.start_commit(repo, lab.queue)
    bg = lab.submit(fleet, "--wait", "--json")
    # no ticket worker yet: the batch's messages wait in the ticket queue ...
    assert wait_until(lambda: lab.client.llen("tickets") == 2, timeout=30), lab.logs()
    lab.client.delete("tickets")  # ... and vanish, as a popped message of a cut-off worker does
    fleet.start_tickets("tickets", concurrency=2)

    res = bg.result(timeout=90)
    assert res.code == 0, res.stderr + lab.logs()
    assert res.data is not None
    completed_once(lab, res.data, ids)
    assert run_counts(lab.trace) == {t: 1 for t in ids}
    log = fleet.log(node)
    assert "ticket M1 not taken for" in log and "ticket M2 not taken for" in log
    assert "batch 1 finished but its barrier never ran; finishing it" in log
    for tid in ("M1", "M2"):  # and the event line a fleet's logs are searched by
        assert re.search(
            rf"sage\.ticket run={res.data['run_id']} ticket={tid} host=\S+ state=QUEUED "
            r'event=resent reason="not taken for \d+ s"',
            log,
        ), log


def test_a_conflict_re_run_whose_commit_worker_died_before_sending_it_is_not_lost(
    lab: Lab,
) -> None:
    # two siblings edit one line: the second to commit conflicts and is to run again; its
    # commit worker's pool process dies after recording the re-run, before sending it
    fleet = lab.fleet(SAGE_VISIBILITY_TIMEOUT="6", SAGE_TICKET_TIMEOUT="5")
    edit = 'sleep 0.5; printf \'%s %s\\n\' "$(head -n1 shared.txt)" "$SAGE_TICKET_ID" > shared.txt'
    ids = ["X1", "X2", "Y1", "Y2"]
    repo = lab.make_repo(
        [
            ticket("X1", edit),
            ticket("X2", edit),
            ticket("Y1", "echo y1 > y1.txt", ["X1"]),
            ticket("Y2", "echo y2 > y2.txt", ["X2"]),
        ],
        files={"shared.txt": "zero\n"},
    )
    fleet.start_tickets("tickets", concurrency=2)
    fleet.start_commit(repo, lab.queue, SAGE_FAULT="after-rerun")
    res = lab.submit(fleet, "--wait", "--json", "--conflict-retries", "1").result(timeout=120)
    assert res.code == 0, res.stderr + lab.logs()
    assert res.data is not None
    assert sorted(res.data["completed"]) == ids, res.data
    branch = res.data["branch"]
    assert set(states(repo, branch).values()) == {"COMPLETED"}
    assert sorted(ticket_log(repo, branch)) == ids  # one commit each
    line = git(repo, "show", f"{branch}:shared.txt").strip()
    assert line in ("zero X1 X2", "zero X2 X1"), line
