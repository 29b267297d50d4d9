"""sage-tasks on several hosts: each a Linux network namespace with its own address.

The hub runs Redis, a read-only git daemon and the commit worker; each worker
host runs one ticket worker that fetches over ``git://`` from the hub; the
producer clones over ``git://`` and submits from its own namespace. The tests
cut hosts off the switch (``ip link set ... down``) in the middle of a run.

Ticket commands record the worker host that ran them (``$FLEET_HOST``, set on
each worker) in the files they commit, and check that their dependencies'
files are in their worktree, so a run passes only when every ticket saw its
dependencies' commits, wherever those ran.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.builders import index, ticket
from tests.support.gitrepo import INDEX, commit_files, git, index_bytes
from tests.support.netns_fleet import Multihost, SageHosts, Submission, check_completed, host_of
from tests.support.procs import wait_for
from tests.support.runs import check_commits, rows, ticket_log

pytestmark = pytest.mark.slow


def work(
    tid: str,
    deps: Sequence[str] = (),
    *,
    sleep: float = 0,
    marks: Path | None = None,
    saw: bool = False,
) -> str:
    """Fail unless every dependency's file is here; then write this ticket's, naming the host.

    ``marks``: also drop ``<marks>/<tid>.<host>`` when the command starts (a
    side channel through the shared file system, so a test can time a fault).
    ``saw``: copy the dependencies' files (the hosts that made them, as this
    worktree shows them) into ``seen/<tid>.txt``.
    """
    steps = [f"test -f out/{d}.txt" for d in deps]
    if marks is not None:
        steps.append(f"touch {marks}/{tid}.$FLEET_HOST")
    if saw:
        steps.append("mkdir -p seen")
        steps += [f"cat out/{d}.txt >> seen/{tid}.txt" for d in deps]
    if sleep:
        steps.append(f"sleep {sleep:g}")
    steps.append(f'mkdir -p out && echo "$FLEET_HOST" > out/{tid}.txt')
    return " && ".join(steps)


def layered(sizes: Sequence[int], seed: int, **kw: Any) -> list[dict[str, Any]]:
    """A graph in levels: each ticket depends on 1-3 tickets of the level above (and at times
    one two levels up)."""
    rng = random.Random(seed)
    levels: list[list[str]] = []
    tickets = []
    for lvl, size in enumerate(sizes):
        ids = [f"T{lvl}{chr(65 + i)}" for i in range(size)]
        for tid in ids:
            deps: list[str] = []
            if lvl:
                deps = rng.sample(levels[-1], rng.randint(1, min(3, len(levels[-1]))))
                if lvl > 1 and rng.random() < 0.3:
                    deps.append(rng.choice(levels[-2]))
            tickets.append(ticket(tid, work(tid, deps, **kw), deps))
        levels.append(ids)
    return tickets


def layered_run_under_way(
    multihost: Multihost, workers: Sequence[str], sizes: Sequence[int], seed: int, marks: Path
) -> tuple[SageHosts, list[dict[str, Any]], Submission]:
    """A fleet on ``workers`` running a :func:`layered` graph of two-second tickets, once three
    of them have started (each drops its mark in ``marks``): the fleet, the tickets, the run."""
    fleet = multihost(workers)
    marks.mkdir()
    tickets = layered(sizes, seed=seed, sleep=2, marks=marks)
    fleet.start(index(*tickets))
    sub = fleet.submit()
    wait_for(
        lambda: len(list(marks.iterdir())) >= 3,
        60,
        "tickets to start",
        interval=0.1,
        logs=fleet.logs,
    )
    return fleet, tickets, sub


def file_at(repo: Path, ref: str, path: str) -> str:
    return git(repo, "show", f"{ref}:{path}")


def test_a_forty_ticket_graph_runs_on_every_worker_host_and_commits_in_dependency_order(
    multihost: Multihost,
) -> None:
    fleet = multihost(("w1", "w2", "w3"))
    tickets = layered([8, 8, 8, 8, 8], seed=40, sleep=0.5)
    assert len(tickets) == 40
    fleet.start(index(*tickets))
    res = fleet.submit().wait(240)
    data = check_completed(fleet, res, tickets)
    record = rows(data)
    assert {host_of(r["host"]) for r in record.values()} == {"w1", "w2", "w3"}
    check_commits(fleet.canonical, data["branch"], tickets)
    # the committed file names the host the run record says ran the ticket
    for tid, row in record.items():
        assert row["attempts"] == 1, row
        assert file_at(fleet.canonical, data["branch"], f"out/{tid}.txt").strip() == host_of(
            row["host"]
        )
    status = fleet.status(data["run_id"])
    assert {r["id"]: r["host"] for r in status["tickets"]} == {
        t: r["host"] for t, r in record.items()
    }


def _settled(fleet: SageHosts, name: str) -> bool:
    """Every run_ticket task the worker ever received has ended (succeeded, raised, retried)."""
    log = fleet.log(name)
    seen = re.findall(r"sage\.run_ticket\[([0-9a-f-]{36})\] (\w+)", log)
    received = {task for task, word in seen if word == "received"}
    ended = {task for task, word in seen if word != "received"}
    ended |= set(re.findall(r"Discarding revoked task: sage\.run_ticket\[([0-9a-f-]{36})\]", log))
    return received <= ended


def test_a_host_cut_off_mid_ticket_has_them_finished_elsewhere_and_no_double_commit_on_return(
    multihost: Multihost,
) -> None:
    vt = 12.0
    silence = 5.0
    fleet = multihost(
        ("w1", "w2", "w3"), visibility_timeout=vt, ticket_timeout=10, heartbeat_timeout=silence
    )
    first = [ticket(f"L{i:02d}", work(f"L{i:02d}", sleep=4)) for i in range(12)]
    second = []
    for i in range(6):
        deps = [f"L{2 * i:02d}", f"L{2 * i + 1:02d}"]
        second.append(ticket(f"M{i:02d}", work(f"M{i:02d}", deps), deps))
    tickets = first + second
    fleet.start(index(*tickets))
    sub = fleet.submit()

    def on_w1() -> list[str]:
        st = fleet.status(check=False)
        return [
            t["id"]
            for t in st.get("tickets", [])
            if t["state"] == "RUNNING" and t["host"] == "w1@w1"
        ]

    wait_for(on_w1, 60, "w1 to take a ticket", logs=fleet.logs, interval=0.1)
    fleet.topo.cut("w1")
    cut_at = time.monotonic()
    # the records as w1 left them: what it had taken and not finished when it was cut off
    in_flight = on_w1()
    assert in_flight, "w1 finished its tickets before the cut"

    res = sub.wait(240)
    ended_at = time.monotonic()
    data = check_completed(fleet, res, tickets)
    record = rows(data)
    for tid in in_flight:
        assert host_of(record[tid]["host"]) in ("w2", "w3"), record[tid]
    # nobody else took them before w1 was silent for the heartbeat timeout
    assert ended_at - cut_at >= silence, (ended_at - cut_at, in_flight)
    order = check_commits(fleet.canonical, data["branch"], tickets)

    # w1 comes back: whatever it still held ends without a second commit
    fleet.topo.restore("w1")
    wait_for(
        lambda: _settled(fleet, "w1"), 120, "w1's old tasks to end", interval=0.5, logs=fleet.logs
    )
    wait_for(
        lambda: fleet.redis_cli("hub", "llen", "commit") == "0", 30, "the commit queue to drain"
    )
    time.sleep(2)
    assert ticket_log(fleet.canonical, data["branch"]) == order
    assert git(fleet.canonical, "rev-parse", data["branch"]).strip() == data["head"]
    after = rows(fleet.status(data["run_id"]))
    assert {t: r["state"] for t, r in after.items()} == {t: "COMPLETED" for t in record}
    assert {t: r["host"] for t, r in after.items()} == {t: r["host"] for t, r in record.items()}
    assert {t: r["commit"] for t, r in after.items()} == {t: r["commit"] for t, r in record.items()}

    # and it takes tickets again: a second run, eight tickets for six slots
    again = [ticket(f"N{i}", work(f"N{i}", sleep=1)) for i in range(8)]
    commit_files(fleet.canonical, "main", {INDEX: index_bytes(index(*again))}, "second graph")
    res2 = fleet.submit().wait(120)
    data2 = check_completed(fleet, res2, again)
    assert "w1" in {host_of(r["host"]) for r in data2["tickets"]}, data2["tickets"]


def test_the_hub_cut_off_for_a_few_seconds_delays_the_run_but_it_completes(
    multihost: Multihost, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    fleet, tickets, sub = layered_run_under_way(
        multihost, ("w1", "w2", "w3"), [6, 6, 6, 6], 3, marks
    )
    fleet.topo.cut("hub")
    # Redis, the git daemon and the commit worker are out of every worker's reach; the
    # tickets just started end their commands meanwhile, and cannot report
    in_flight = {p.name.split(".")[0] for p in marks.iterdir()}
    time.sleep(8)
    fleet.topo.restore("hub")
    res = sub.wait(240)
    data = check_completed(fleet, res, tickets)
    check_commits(fleet.canonical, data["branch"], tickets)
    assert len(in_flight) < len(tickets), "the run was over before the cut"
    assert data["duration_s"] > 8


def test_the_hub_s_redis_restarting_on_its_append_only_file_loses_neither_the_run_nor_its_follower(
    multihost: Multihost, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    fleet, tickets, sub = layered_run_under_way(multihost, ("w1", "w2"), [5, 5, 5], 5, marks)
    fleet.stop_process("redis", grace=15)  # SIGTERM: Redis syncs its append-only file and exits
    time.sleep(3)
    fleet.start_redis()
    fleet.wait_redis(["hub", "w1", "w2", "producer"])

    # the run, seen from Redis itself, whatever the follower does
    def ended() -> dict[str, Any]:
        st = fleet.status(check=False)
        return st if st.get("status") in ("FINISHED", "FAILED") else {}

    final = wait_for(ended, 180, "the run to end", logs=fleet.logs, interval=1)
    assert final["status"] == "FINISHED", final
    assert {r["state"] for r in final["tickets"]} == {"COMPLETED"}, final["tickets"]
    check_commits(fleet.canonical, final["branch"], tickets)
    # and `sage-submit --wait` followed it through the restart
    res = sub.wait(60)
    assert res.code == 0, f"--wait gave up on a 3 s broker restart:\n{res.stderr[-1500:]}"
    check_completed(fleet, res, tickets)


def test_a_ticket_sees_its_dependency_s_file_even_when_another_host_made_it(
    multihost: Multihost,
) -> None:
    fleet = multihost(("w1", "w2"))
    chains = [[f"C{c}{i}" for i in range(6)] for c in range(3)]
    tickets = []
    for chain in chains:
        for i, tid in enumerate(chain):
            deps = chain[i - 1 : i] if i else []
            tickets.append(ticket(tid, work(tid, deps, saw=True, sleep=0.3), deps))
    tails = [chain[-1] for chain in chains]
    tickets.append(ticket("JOIN", work("JOIN", tails, saw=True), tails))
    fleet.start(index(*tickets))
    res = fleet.submit().wait(240)
    data = check_completed(fleet, res, tickets)
    check_commits(fleet.canonical, data["branch"], tickets)
    branch = data["branch"]
    host = {tid: host_of(r["host"]) for tid, r in rows(data).items()}
    for r in data["tickets"]:
        assert r["attempts"] == 1, r
    crossed = []
    for t in tickets:
        tid = t["id"]
        assert file_at(fleet.canonical, branch, f"out/{tid}.txt").strip() == host[tid]
        if not t["dependencies"]:
            continue
        seen = file_at(fleet.canonical, branch, f"seen/{tid}.txt").split()
        # what the ticket read in its worktree is what its dependencies' hosts wrote
        assert seen == [host[d] for d in t["dependencies"]], (tid, seen)
        crossed += [(d, tid) for d in t["dependencies"] if host[d] != host[tid]]
    assert crossed, f"every dependency ran on its dependent's host: {host}"
    assert set(host.values()) == {"w1", "w2"}
