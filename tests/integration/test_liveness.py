"""Liveness on real processes of one machine: cancel, fencing of a frozen or dead worker,
a refusing commit worker, and the warnings of a run nobody serves.

Every ticket command here writes its process group id to ``<pids>/<ticket>.<worker>``
when it starts, so a test can tell whether that command's group is still alive.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.builders import ticket, writes
from tests.support.faults import Background, kill_host
from tests.support.fleet import Fleet, unique_queue
from tests.support.gitrepo import make_repo
from tests.support.procs import (
    alive,
    bin_path,
    descendants,
    group_alive,
    marked_groups,
    record_group,
    wait_until,
)
from tests.support.runs import latest_run, record, states, ticket_log

pytestmark = pytest.mark.fleet(per_test=True)


def gated(tid: str, pids: Path, gate: Path, deps: list[str] | None = None) -> str:
    """Record the command's process group, wait for ``gate`` (or for ever), write a file."""
    loop = f"while [ ! -f {shlex.quote(str(gate))} ]; do sleep 0.1; done"
    return f"{record_group(tid, pids, '${WORKER:-w}')} && {loop} && {writes(tid, deps)}"


@dataclass
class Held:
    """A run of one ticket held by the only ticket worker: its command waits for ``gate``."""

    repo: Path
    queue: str
    submitted: Background
    pids: Path
    gate: Path


def held_on(fleet: Fleet, tmp_path: Path, tid: str, worker: str, **env: str) -> Held:
    """Run ticket ``tid`` on a ticket worker of its own, ``worker`` (the fleet's ``tickets``
    stopped), where it waits for a gate; anywhere else it is quick. ``env`` goes to the
    workers and ``sage-submit --wait``; returns once the command runs."""
    pids, gate = tmp_path / "pids", tmp_path / "gate"
    pids.mkdir()
    slow = gated(tid, pids, gate)
    quick = f"{record_group(tid, pids, '$WORKER')} && {writes(tid)}"
    command = f'if [ "$WORKER" = {worker} ]; then {slow}; else {quick}; fi'
    repo = make_repo(
        tmp_path / "repo", {}, {"version": "1.0", "tickets": [ticket(tid, command, timeout=300)]}
    )
    queue = unique_queue()
    fleet.kill("tickets")  # only the named workers
    fleet.start_tickets(worker, concurrency=1, WORKER=worker, **env)
    fleet.start_commit(repo, queue, **env)
    fleet.wait_ready(worker)
    bg = Background(fleet, repo, "--wait", "--json", queue=queue, **env)
    assert wait_until(lambda: worker in marked_groups(pids, tid), 60), fleet.logs()
    return Held(repo, queue, bg, pids, gate)


def test_cancel_kills_the_running_commands_commits_nothing_more_wait_exits_4_and_the_branch_resumes(
    fleet: Fleet, tmp_path: Path
) -> None:
    pids, gate = tmp_path / "pids", tmp_path / "gate"
    pids.mkdir()
    tickets = [
        ticket("A", writes("A")),
        ticket("B", gated("B", pids, gate), timeout=300),
        ticket("C", gated("C", pids, gate), timeout=300),
        ticket("D", writes("D", ["B"]), ["B"]),
    ]
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": tickets})
    queue = unique_queue()
    fleet.start_commit(repo, queue)
    branch = "sage/cancelled"
    bg = Background(fleet, repo, "--wait", "--json", "--branch", branch, queue=queue)
    assert wait_until(
        lambda: len(marked_groups(pids, "B")) + len(marked_groups(pids, "C")) == 2, 60
    ), fleet.logs()
    assert wait_until(lambda: "A" in ticket_log(repo, branch), 30), fleet.logs()
    running = [*marked_groups(pids, "B").values(), *marked_groups(pids, "C").values()]
    assert all(group_alive(g) for g in running)
    run_id = latest_run(fleet.redis.client())

    cancel = fleet.submit(repo, "cancel", queue=queue)
    assert cancel.code == 0, cancel.stderr + cancel.stdout
    assert f"run {run_id} CANCELLED" in cancel.stdout
    # the cancel command returns once the commands are gone (within a heartbeat)
    assert not any(group_alive(g) for g in running), fleet.logs()

    res = bg.result(timeout=60)
    assert res.code == 4, res.stderr + fleet.logs()
    assert res.data is not None and res.data["status"] == "CANCELLED"
    shown = fleet.submit(repo, "status", run_id, "--json", queue=queue)
    assert shown.data is not None and shown.data["status"] == "CANCELLED"
    rows = {t["id"]: t["state"] for t in shown.data["tickets"]}
    assert rows == {"A": "COMPLETED", "B": "CANCELLED", "C": "CANCELLED", "D": "PENDING"}
    time.sleep(2)  # nothing trickles in after the cancel
    assert ticket_log(repo, branch) == ["A"]

    gate.touch()
    again = fleet.submit(repo, "--wait", "--json", "--branch", branch, queue=queue)
    assert again.code == 0, again.stderr + fleet.logs()
    assert sorted(ticket_log(repo, branch)) == ["A", "B", "C", "D"]
    assert set(states(repo, branch).values()) == {"COMPLETED"}


def test_a_frozen_worker_loses_its_ticket_after_the_heartbeat_timeout_and_kills_its_command_on_thaw(
    fleet: Fleet, tmp_path: Path
) -> None:
    # on the frozen worker the ticket waits for the gate; anywhere else it is quick
    held = held_on(fleet, tmp_path, "F", "frozen", SAGE_VISIBILITY_TIMEOUT="3600")
    old_group = marked_groups(held.pids, "F")["frozen"]
    tree = [fleet.procs["frozen"].pid, *descendants(fleet.procs["frozen"].pid)]
    for pid in tree:
        os.kill(pid, signal.SIGSTOP)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(old_group, signal.SIGSTOP)
    try:
        fleet.start_tickets("other", concurrency=1, WORKER="other", SAGE_VISIBILITY_TIMEOUT="3600")
        res = held.submitted.result(timeout=90)
    finally:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old_group, signal.SIGCONT)
    assert res.code == 0, res.stderr + fleet.logs()
    assert res.data is not None
    row = res.data["tickets"][0]
    assert row["host"].startswith("other@") and row["attempt_no"] == 2, row
    # thawed, the old attempt hears it is stale at its next beat and kills its command
    assert wait_until(lambda: not group_alive(old_group), 10), fleet.log("frozen")
    # (stale, or final when the ticket's commit got there first)
    stopped = r"attempt 1 stopped \((stale|final)\); killing its command"
    assert re.search(stopped, fleet.log("frozen"))
    held.gate.touch()
    time.sleep(3)
    assert ticket_log(held.repo, res.data["branch"]) == ["F"]
    assert record(fleet.redis.client(), res.data["run_id"], "F")["attempt_no"] == "2"


def test_a_worker_killed_whole_has_its_ticket_run_elsewhere_long_before_the_visibility_timeout(
    fleet: Fleet, tmp_path: Path
) -> None:
    hour = {"SAGE_VISIBILITY_TIMEOUT": "3600", "SAGE_TICKET_TIMEOUT": "600"}
    held = held_on(fleet, tmp_path, "K", "doomed", **hour)
    fleet.start_tickets("survivor", concurrency=1, WORKER="survivor", **hour)
    killed = kill_host(fleet, "doomed")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(marked_groups(held.pids, "K")["doomed"], signal.SIGKILL)
    assert wait_until(lambda: not any(alive(p) for p in killed), 10)
    res = held.submitted.result(timeout=90)
    assert res.code == 0, res.stderr + fleet.logs()
    assert res.data is not None
    assert ticket_log(held.repo, res.data["branch"]) == ["K"]
    row = res.data["tickets"][0]
    assert row["host"].startswith("survivor@") and row["attempts"] == 2, row
    assert "silent for" in fleet.log(f"commit-{held.queue}")


def test_a_commit_worker_that_refuses_the_repository_ends_wait_with_exit_3_and_its_reason(
    fleet: Fleet, tmp_path: Path
) -> None:
    served = make_repo(tmp_path / "served", {}, {"version": "1.0", "tickets": []})
    other = make_repo(
        tmp_path / "other", {}, {"version": "1.0", "tickets": [ticket("R", writes("R"))]}
    )
    queue = unique_queue()
    fleet.start_commit(served, queue)
    res = fleet.submit(other, "--wait", "--json", queue=queue, timeout=60)
    assert res.code == 3, res.stderr + fleet.logs()
    assert f"commit worker commit-{queue}@" in res.stderr
    assert "refused" in res.stderr and str(other.resolve()) in res.stderr
    assert res.data is not None and res.data["status"] == "FAILED"


def test_wait_warns_naming_the_queue_nobody_consumes_and_ctrl_c_only_stops_watching(
    fleet: Fleet, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "repo", {}, {"version": "1.0", "tickets": [ticket("W", writes("W"))]}
    )
    queue = unique_queue()
    err = tmp_path / "wait.out"
    with open(err, "wb") as output:
        proc = subprocess.Popen(
            [bin_path("sage-submit"), "--repo", str(repo), "--commit-queue", queue, "--wait"],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=fleet.env(),
        )
    try:
        warned = f"no worker consumes queue '{queue}'"
        assert wait_until(lambda: warned in err.read_text(), 30), err.read_text()
        text = err.read_text()
        assert f"sage-worker commit --repo PATH --commit-queue {queue}" in text
        assert "no worker consumes queue 'tickets'" not in text  # that queue has a worker
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    run_id = latest_run(fleet.redis.client())
    assert f"stopped watching run {run_id}; it goes on" in err.read_text()
    # the run did go on: a commit worker started now runs it
    fleet.start_commit(repo, queue)
    assert wait_until(
        lambda: record(fleet.redis.client(), run_id, "W").get("state") == "COMPLETED", 60
    ), fleet.logs()


def test_cancel_of_an_unknown_run_is_one_line_and_exit_2(fleet: Fleet, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": []})
    res = fleet.submit(repo, "cancel", "nosuchrun", queue="commit")
    assert res.code == 2
    assert res.stderr.strip() == "sage: error: unknown run 'nosuchrun'"


def test_ctrl_c_during_wait_on_a_terminal_asks_and_cancel_ends_the_run_with_exit_4(
    fleet: Fleet, tmp_path: Path
) -> None:
    pids, gate = tmp_path / "pids", tmp_path / "gate"
    pids.mkdir()
    tickets = [ticket("P", gated("P", pids, gate), timeout=300)]
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": tickets})
    queue = unique_queue()
    fleet.start_commit(repo, queue)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [bin_path("sage-submit"), "--repo", str(repo), "--commit-queue", queue, "--wait"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=fleet.env(TERM="dumb", COLUMNS="200"),
    )
    os.close(slave)
    seen = bytearray()

    def read_until(text: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while text not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):
                    seen.extend(os.read(master, 65536))
        return text in seen

    try:
        assert wait_until(lambda: bool(marked_groups(pids, "P")), 60), fleet.logs()
        proc.send_signal(signal.SIGINT)
        assert read_until(b"only stop watching it (w)?", 20), seen.decode(errors="replace")
        os.write(master, b"c\n")
        assert proc.wait(60) == 4, seen.decode(errors="replace")
        read_until(b"CANCELLED (cancelled by", 5)  # the summary's first line
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = seen.decode(errors="replace")
    assert "CANCELLED" in text
    assert not any(group_alive(g) for g in marked_groups(pids, "P").values())
    assert ticket_log(repo, f"sage/run-{latest_run(fleet.redis.client())}") == []
