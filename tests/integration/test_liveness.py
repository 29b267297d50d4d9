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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.faults import Background, alive, descendants, kill_host
from tests.support.fleet import Fleet, bin_path, ticket_fleet, unique_queue, wait_until
from tests.support.gitrepo import make_repo
from tests.support.runs import states, ticket, ticket_log, writes


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with ticket_fleet(tmp_path / "fleet", concurrency=2) as f:
        yield f


def gated(tid: str, pids: Path, gate: Path, deps: list[str] | None = None) -> str:
    """Record the command's process group, wait for ``gate`` (or for ever), write a file."""
    mark = shlex.quote(f"{pids}/{tid}.") + "${WORKER:-w}"
    loop = f"while [ ! -f {shlex.quote(str(gate))} ]; do sleep 0.1; done"
    return f"echo $$ > {mark} && {loop} && {writes(tid, deps)}"


def groups(pids: Path, tid: str) -> dict[str, int]:
    """Worker name -> the process group its command of ``tid`` ran in."""
    out = {}
    for p in pids.glob(f"{tid}.*"):
        text = p.read_text().strip()
        if text.isdigit():
            out[p.name.split(".", 1)[1]] = int(text)
    return out


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def client(fleet: Fleet) -> Any:
    return redis.Redis.from_url(fleet.redis.url)


def latest_run(fleet: Fleet) -> str:
    found: list[bytes] = client(fleet).zrevrange("sage:runs", 0, 0)
    return found[0].decode() if found else ""


def record(fleet: Fleet, run_id: str, tid: str) -> dict[str, str]:
    raw = client(fleet).hgetall(f"sage:run:{run_id}:t:{tid}")
    return {k.decode(): v.decode() for k, v in raw.items()}


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
    assert wait_until(lambda: len(groups(pids, "B")) + len(groups(pids, "C")) == 2, 60), (
        fleet.logs()
    )
    assert wait_until(lambda: "A" in ticket_log(repo, branch), 30), fleet.logs()
    running = [*groups(pids, "B").values(), *groups(pids, "C").values()]
    assert all(group_alive(g) for g in running)
    run_id = latest_run(fleet)

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
    pids, gate = tmp_path / "pids", tmp_path / "gate"
    pids.mkdir()
    # on the frozen worker the ticket waits for the gate; anywhere else it is quick
    slow = gated("F", pids, gate)
    quick = f"echo $$ > {pids}/F.$WORKER && {writes('F')}"
    command = f'if [ "$WORKER" = frozen ]; then {slow}; else {quick}; fi'
    repo = make_repo(
        tmp_path / "repo", {}, {"version": "1.0", "tickets": [ticket("F", command, timeout=300)]}
    )
    queue = unique_queue()
    fleet.kill("tickets")  # only the two named workers below
    fleet.start_tickets("frozen", concurrency=1, WORKER="frozen", SAGE_VISIBILITY_TIMEOUT="3600")
    fleet.start_commit(repo, queue, SAGE_VISIBILITY_TIMEOUT="3600")
    assert wait_until(lambda: " ready." in fleet.log("frozen"), 60), fleet.logs()
    bg = Background(fleet, repo, "--wait", "--json", queue=queue, SAGE_VISIBILITY_TIMEOUT="3600")
    assert wait_until(lambda: "frozen" in groups(pids, "F"), 60), fleet.logs()
    old_group = groups(pids, "F")["frozen"]
    tree = [fleet.procs["frozen"].pid, *descendants(fleet.procs["frozen"].pid)]
    for pid in tree:
        os.kill(pid, signal.SIGSTOP)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(old_group, signal.SIGSTOP)
    try:
        fleet.start_tickets("other", concurrency=1, WORKER="other", SAGE_VISIBILITY_TIMEOUT="3600")
        res = bg.result(timeout=90)
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
    gate.touch()
    time.sleep(3)
    assert ticket_log(repo, res.data["branch"]) == ["F"]
    assert record(fleet, res.data["run_id"], "F")["attempt_no"] == "2"


def test_a_worker_killed_whole_has_its_ticket_run_elsewhere_long_before_the_visibility_timeout(
    fleet: Fleet, tmp_path: Path
) -> None:
    pids, gate = tmp_path / "pids", tmp_path / "gate"
    pids.mkdir()
    slow = gated("K", pids, gate)
    quick = f"echo $$ > {pids}/K.$WORKER && {writes('K')}"
    command = f'if [ "$WORKER" = doomed ]; then {slow}; else {quick}; fi'
    repo = make_repo(
        tmp_path / "repo", {}, {"version": "1.0", "tickets": [ticket("K", command, timeout=300)]}
    )
    queue = unique_queue()
    hour = {"SAGE_VISIBILITY_TIMEOUT": "3600", "SAGE_TICKET_TIMEOUT": "600"}
    fleet.kill("tickets")
    fleet.start_tickets("doomed", concurrency=1, WORKER="doomed", **hour)
    fleet.start_commit(repo, queue, **hour)
    assert wait_until(lambda: " ready." in fleet.log("doomed"), 60), fleet.logs()
    bg = Background(fleet, repo, "--wait", "--json", queue=queue, **hour)
    assert wait_until(lambda: "doomed" in groups(pids, "K"), 60), fleet.logs()
    fleet.start_tickets("survivor", concurrency=1, WORKER="survivor", **hour)
    killed = kill_host(fleet, "doomed")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(groups(pids, "K")["doomed"], signal.SIGKILL)
    assert wait_until(lambda: not any(alive(p) for p in killed), 10)
    res = bg.result(timeout=90)
    assert res.code == 0, res.stderr + fleet.logs()
    assert res.data is not None
    assert ticket_log(repo, res.data["branch"]) == ["K"]
    row = res.data["tickets"][0]
    assert row["host"].startswith("survivor@") and row["attempts"] == 2, row
    assert "silent for" in fleet.log(f"commit-{queue}")


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
    run_id = latest_run(fleet)
    assert f"stopped watching run {run_id}; it goes on" in err.read_text()
    # the run did go on: a commit worker started now runs it
    fleet.start_commit(repo, queue)
    assert wait_until(lambda: record(fleet, run_id, "W").get("state") == "COMPLETED", 60), (
        fleet.logs()
    )


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
        assert wait_until(lambda: bool(groups(pids, "P")), 60), fleet.logs()
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
    assert not any(group_alive(g) for g in groups(pids, "P").values())
    assert ticket_log(repo, f"sage/run-{latest_run(fleet)}") == []
