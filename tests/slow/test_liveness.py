"""Liveness across hosts (network namespaces): a dead, cut-off or frozen host costs the
heartbeat timeout, not the visibility timeout; its old attempt never commits and kills
its command when it comes back; a run can be cancelled on every host at once; a commit
worker that refuses the run ends ``--wait`` at once.

Each long ticket writes its process group id to ``<marks>/<ticket>.<host>`` when its
command starts (through the shared file system), so the test knows where it runs and
can tell when that command's process group is gone.
"""

from __future__ import annotations

import shlex
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.builders import index, ticket
from tests.support.netns_fleet import Multihost, SageHosts, Submission, check_completed, host_of
from tests.support.procs import group_alive, marked_groups, record_group, wait_for
from tests.support.runs import check_commits, rows, ticket_log

pytestmark = pytest.mark.slow


def long_once(tid: str, marks: Path, seconds: float) -> str:
    """Record the group, then: the first time anywhere sleep ``seconds``, later runs are quick."""
    first = shlex.quote(f"{marks}/{tid}.first")
    return (
        f"{record_group(tid, marks, '$FLEET_HOST')} && "
        f"if [ -e {first} ]; then :; else touch {first} && sleep {seconds:g}; fi && "
        f'mkdir -p out && echo "$FLEET_HOST" > out/{tid}.txt'
    )


def gated(tid: str, marks: Path, gate: Path) -> str:
    """Record the group, wait until ``gate`` exists, write the ticket's file."""
    return (
        f"{record_group(tid, marks, '$FLEET_HOST')} && "
        f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.2; done && "
        f'mkdir -p out && echo "$FLEET_HOST" > out/{tid}.txt'
    )


def long_ticket_started(
    multihost: Multihost, marks: Path, heartbeat_timeout: float
) -> tuple[SageHosts, list[dict[str, Any]], Submission, str, int]:
    """LONG (five minutes the first time it runs, quick later) and four quick tickets on two
    worker hosts, the visibility timeout an hour, until LONG has started.

    Returns the fleet, the tickets, the run, and where LONG runs: its host, its process group.
    """
    marks.mkdir()
    fleet = multihost(
        ("w1", "w2"),
        visibility_timeout=3600,
        ticket_timeout=600,
        heartbeat_timeout=heartbeat_timeout,
    )
    tickets = [ticket("LONG", long_once("LONG", marks, 300), timeout=600)]
    tickets += [ticket(f"Q{i}", f"mkdir -p out && echo q > out/Q{i}.txt") for i in range(3)]
    tickets.append(ticket("AFTER", "test -f out/LONG.txt && echo a > after.txt", ["LONG"]))
    fleet.start(index(*tickets))
    sub = fleet.submit()
    started = wait_for(lambda: marked_groups(marks, "LONG"), 60, "LONG to start", logs=fleet.logs)
    ((host, group),) = started.items()
    return fleet, tickets, sub, host, group


def test_a_host_killed_whole_during_a_five_minute_ticket_has_it_run_elsewhere_within_45_s(
    multihost: Multihost, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    # the heartbeat timeout its default
    fleet, tickets, sub, doomed, _ = long_ticket_started(multihost, marks, heartbeat_timeout=30)
    assert fleet.topo.kill_host(doomed)
    killed_at = time.monotonic()
    wait_for(lambda: not fleet.topo.pids(doomed), 10, "every process of the host to be dead")
    other = wait_for(
        lambda: [h for h in marked_groups(marks, "LONG") if h != doomed],
        60,
        "LONG to run again elsewhere",
        logs=fleet.logs,
    )
    restarted_after = time.monotonic() - killed_at
    assert restarted_after < 45, f"LONG ran again {restarted_after:.1f} s after the kill"
    res = sub.wait(240)
    data = check_completed(fleet, res, tickets)
    check_commits(fleet.canonical, data["branch"], tickets)
    long_row = rows(data)["LONG"]
    assert host_of(long_row["host"]) == other[0] and long_row["attempt_no"] == 2, long_row


@pytest.mark.parametrize("fault", ["partition", "freeze"])
def test_a_host_cut_off_or_frozen_loses_its_ticket_and_kills_the_command_when_it_comes_back(
    multihost: Multihost, tmp_path: Path, fault: str
) -> None:
    fleet, tickets, sub, away, old_group = long_ticket_started(
        multihost, tmp_path / "marks", heartbeat_timeout=5
    )
    if fault == "partition":
        fleet.topo.cut(away)
    else:
        fleet.topo.signal_host(away, signal.SIGSTOP)
    struck = time.monotonic()
    try:
        res = sub.wait(240)
        data = check_completed(fleet, res, tickets)
        order = check_commits(fleet.canonical, data["branch"], tickets)
        long_row = rows(data)["LONG"]
        assert host_of(long_row["host"]) != away and long_row["attempt_no"] == 2, long_row
        if fault == "partition":
            # cut off for 60 s; its worker may notice the lost broker meanwhile and end the
            # task, which takes the command with it
            time.sleep(max(0.0, 60 - (time.monotonic() - struck)))
        else:
            assert group_alive(old_group), "the frozen command died before it was thawed"
    finally:
        if fault == "partition":
            fleet.topo.restore(away)
        else:
            fleet.topo.signal_host(away, signal.SIGCONT)
    back = time.monotonic()
    wait_for(
        lambda: not group_alive(old_group), 30, "the old command to be killed", logs=fleet.logs
    )
    # within one heartbeat interval (1 s here) of the first beat that gets through
    gone_after = time.monotonic() - back
    assert gone_after < 5, f"the old command lived {gone_after:.1f} s after its host came back"
    if fault == "freeze":
        assert "attempt 1 stopped" in fleet.log(away), fleet.log(away)[-3000:]
    wait_for(lambda: fleet.redis_cli("hub", "llen", "commit") == "0", 30, "the commit queue")
    time.sleep(2)
    assert ticket_log(fleet.canonical, data["branch"]) == order  # its patch never committed
    after = rows(fleet.status(data["run_id"]))
    assert after["LONG"]["host"] == long_row["host"] and after["LONG"]["attempt_no"] == 2


def test_cancel_on_two_hosts_kills_every_command_commits_nothing_more_and_resubmitting_finishes(
    multihost: Multihost, tmp_path: Path
) -> None:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    fleet = multihost(("w1", "w2"), ticket_timeout=600, visibility_timeout=3600)
    long_ids = [f"G{i}" for i in range(4)]
    tickets = [ticket(t, gated(t, marks, gate), timeout=600) for t in long_ids]
    tickets.append(ticket("QUICK", "echo q > quick.txt", priority="P0"))
    tickets.append(ticket("NEXT", "echo n > next.txt", long_ids))
    fleet.start(index(*tickets))
    sub = fleet.submit("--parallel", "8")

    def all_running() -> dict[str, int]:
        groups = {f"{t}.{h}": g for t in long_ids for h, g in marked_groups(marks, t).items()}
        return groups if len(groups) == len(long_ids) else {}

    # QUICK goes first (P0), then the four long tickets fill both hosts' two slots each
    groups = wait_for(all_running, 90, "the four long tickets to run", logs=fleet.logs)
    assert {name.split(".")[1] for name in groups} == {"w1", "w2"}, groups
    wait_for(lambda: fleet.status(check=False).get("running"), 30, "the record to show them")
    branch = fleet.status()["branch"]
    wait_for(
        lambda: "QUICK" in ticket_log(fleet.canonical, branch),
        60,
        "QUICK's commit",
        logs=fleet.logs,
    )
    before = ticket_log(fleet.canonical, branch)

    cancelled = fleet.cancel()
    assert cancelled.returncode == 0, cancelled.stderr
    assert "CANCELLED" in cancelled.stdout, cancelled.stdout
    # the cancel command returns when the commands are gone: within one heartbeat interval
    alive = [name for name, g in groups.items() if group_alive(g)]
    assert not alive, f"still running after cancel: {alive}\n{fleet.logs()}"
    res = sub.wait(60)
    assert res.code == 4, res.stderr[-3000:]
    assert res.data is not None and res.data["status"] == "CANCELLED"
    assert fleet.status(res.data["run_id"])["status"] == "CANCELLED"
    time.sleep(3)
    assert ticket_log(fleet.canonical, branch) == before == ["QUICK"]

    gate.touch()
    again = fleet.submit(branch=branch).wait(120)
    assert again.code == 0, again.stderr[-3000:] + fleet.logs()
    check_commits(fleet.canonical, branch, tickets)


def test_a_commit_worker_that_refuses_the_run_ends_wait_with_exit_3_and_its_reason(
    multihost: Multihost,
) -> None:
    fleet = multihost(("w1",))
    fleet.start(index(ticket("R", "echo r > r.txt")))
    # the commit worker restarted without the --repo-url the producer gives
    fleet.stop_process("commit")
    fleet.start_commit_worker(with_url=False)
    fleet.wait_ready(["commit"])
    started_at = time.monotonic()
    res = fleet.submit().wait(60)
    took = time.monotonic() - started_at
    assert res.code == 3, res.stderr[-3000:]
    assert "commit worker commit@hub refused the run" in res.stderr, res.stderr[-3000:]
    assert fleet.repo_url in res.stderr
    assert took < 30, f"--wait took {took:.1f} s to report the refusal"
