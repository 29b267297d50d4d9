"""Whole runs on real processes: redis-server, sage-worker tickets/commit, sage-submit --wait.

Each ticket's command checks that its dependencies' work is in its worktree,
so a test passes only when the commit order and the worktrees are right.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.support.builders import ticket, writes
from tests.support.fleet import Fleet, unique_queue
from tests.support.gitrepo import INDEX, git, make_repo, work_tree_files
from tests.support.procs import wait_until
from tests.support.runs import index_at, states, ticket_log


def test_a_diamond_runs_in_dependency_order_with_one_commit_per_ticket(run: Any) -> None:
    tickets = [
        ticket("A", writes("A")),
        ticket("B", writes("B", ["A"]), ["A"]),
        ticket("C", writes("C", ["A"]), ["A"]),
        ticket("D", writes("D", ["B", "C"]), ["B", "C"]),
    ]
    repo, res = run(tickets, expect=0)
    data = res.data
    assert sorted(data["completed"]) == ["A", "B", "C", "D"]
    assert data["deferred"] == {} and data["blocked"] == []
    order = ticket_log(repo, data["branch"])
    assert sorted(order) == ["A", "B", "C", "D"]
    assert order[0] == "A" and order[-1] == "D"
    assert git(repo, "rev-parse", data["branch"]).strip() == data["head"]
    assert set(states(repo, data["branch"]).values()) == {"COMPLETED"}
    for tid in "ABCD":
        assert git(repo, "show", f"{data['branch']}:out/{tid}.txt").strip() == tid


def test_a_chain_sees_each_predecessor_in_its_worktree(run: Any) -> None:
    ids = [f"S{i}" for i in range(5)]
    tickets = [ticket(t, writes(t, ids[:i]), ids[max(0, i - 1) : i]) for i, t in enumerate(ids)]
    repo, res = run(tickets, expect=0)
    assert ticket_log(repo, res.data["branch"]) == ids


def test_two_siblings_editing_one_line_defer_one_and_block_its_dependent(run: Any) -> None:
    tickets = [
        ticket("X1", "sleep 0.5; echo one > shared.txt"),
        ticket("X2", "sleep 0.5; echo two > shared.txt"),
        ticket("Y1", writes("Y1"), ["X1"]),
        ticket("Y2", writes("Y2"), ["X2"]),
    ]
    repo, res = run(tickets, files={"shared.txt": "zero\n"}, expect=1)
    data = res.data
    assert len(data["deferred"]) == 1
    loser = next(iter(data["deferred"]))
    assert "merge conflict" in data["deferred"][loser] and "shared.txt" in data["deferred"][loser]
    dependent = {"X1": "Y1", "X2": "Y2"}[loser]
    assert data["blocked"] == [dependent]
    final = states(repo, data["branch"])
    assert final[loser] == "DEFERRED" and final[dependent] == "UNPROCESSED"
    deferred = next(t for t in index_at(repo, data["branch"])["tickets"] if t["id"] == loser)
    assert "shared.txt" in deferred["deferred_reason"]
    # the DEFERRED ticket's commit holds only the index change
    log = git(repo, "log", "--format=%H %s", data["branch"])
    sha = next(line.split()[0] for line in log.splitlines() if line.split()[1] == f"{loser}:")
    assert git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", sha).split() == [INDEX]
    winner_child = {"X1": "Y2", "X2": "Y1"}[loser]
    assert sorted(ticket_log(repo, data["branch"])) == sorted(["X1", "X2", winner_child])


def test_a_failing_ticket_is_deferred_with_its_output_and_its_descendants_blocked(run: Any) -> None:
    tickets = [
        ticket("OK", writes("OK")),
        ticket("BAD", "echo something broke >&2; exit 3"),
        ticket("CHILD", writes("CHILD"), ["BAD"]),
        ticket("GRANDCHILD", writes("GRANDCHILD"), ["CHILD"]),
    ]
    repo, res = run(tickets, expect=1)
    data = res.data
    assert data["completed"] == ["OK"]
    assert "exit code 3" in data["deferred"]["BAD"]
    assert "something broke" in data["deferred"]["BAD"]
    assert sorted(data["blocked"]) == ["CHILD", "GRANDCHILD"]
    assert sorted(ticket_log(repo, data["branch"])) == ["BAD", "OK"]


def test_an_already_completed_dependency_is_not_run_again(run: Any) -> None:
    tickets = [
        ticket("DONE", "exit 9", state="COMPLETED"),
        ticket("NEXT", writes("NEXT"), ["DONE"]),
    ]
    repo, res = run(tickets, expect=0)
    assert res.data["completed"] == ["NEXT"]
    assert ticket_log(repo, res.data["branch"]) == ["NEXT"]


def test_deletions_renames_and_binary_files_reach_the_branch(run: Any) -> None:
    blob = bytes(range(256)) * 8
    tickets = [
        ticket("DEL", "git rm -q gone.txt"),
        ticket("BIN", "printf '\\000\\001\\002\\377' > data.bin"),
        ticket("MV", "git mv old.txt new.txt"),
    ]
    files: dict[str, str | bytes] = {"gone.txt": "bye\n", "old.txt": "moving\n", "blob.bin": blob}
    repo, res = run(tickets, files=files, expect=0)
    branch = res.data["branch"]
    tree = git(repo, "ls-tree", "-r", "--name-only", branch).split()
    assert "gone.txt" not in tree and "old.txt" not in tree and "new.txt" in tree
    assert git(repo, "show", f"{branch}:new.txt") == "moving\n"
    raw = subprocess.run(
        ["git", "-C", str(repo), "show", f"{branch}:data.bin"], capture_output=True, check=True
    ).stdout
    assert raw == b"\x00\x01\x02\xff"


def test_an_executor_that_edits_the_index_does_not_get_its_edit_taken(run: Any) -> None:
    edit = (
        f"python3 -c \"import json;p='{INDEX}';d=json.load(open(p));"
        "d['tickets'][0]['title']='hacked';json.dump(d,open(p,'w'))\" && echo x > x.txt"
    )
    repo, res = run([ticket("EDIT", edit)], expect=0)
    branch = res.data["branch"]
    data = index_at(repo, branch)
    assert data["tickets"][0]["title"] == "ticket EDIT"
    assert data["tickets"][0]["state"] == "COMPLETED"
    assert git(repo, "show", f"{branch}:x.txt").strip() == "x"


def test_a_run_onto_the_checked_out_branch_leaves_the_work_tree_untouched(
    fleet: Fleet, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"keep.txt": "committed\n"},
        {"version": "1.0", "tickets": [ticket("W", writes("W"))]},
    )
    git(repo, "checkout", "-q", "-b", "work")
    (repo / "keep.txt").write_text("local edit, not committed\n")
    (repo / "scratch.txt").write_text("untracked\n")

    before_files = work_tree_files(repo)
    before_index = (repo / ".git" / "index").read_bytes()
    queue = unique_queue()
    node = fleet.start_commit(repo, queue)
    try:
        res = fleet.submit(repo, "--branch", "work", "--wait", "--json", queue=queue)
    finally:
        fleet.kill(node)
    assert res.code == 0, res.stderr + fleet.logs()
    assert ticket_log(repo, "work") == ["W"]
    assert work_tree_files(repo) == before_files
    assert (repo / ".git" / "index").read_bytes() == before_index
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/work"


def test_a_run_on_a_bare_repository_commits_every_ticket(run: Any) -> None:
    repo, res = run(
        [ticket("B1", writes("B1")), ticket("B2", writes("B2", ["B1"]), ["B1"])],
        bare=True,
        expect=0,
    )
    assert ticket_log(repo, res.data["branch"]) == ["B1", "B2"]


def test_single_ticket_groups_run_one_chord_each(run: Any) -> None:
    tickets = [ticket(f"P{i}", writes(f"P{i}")) for i in range(4)]
    repo, res = run(tickets, "--parallel", "1", expect=0)
    assert res.data["batches"] == 4
    assert sorted(ticket_log(repo, res.data["branch"])) == ["P0", "P1", "P2", "P3"]


def test_main_is_refused_without_allow_main(fleet: Fleet, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": [ticket("A", "true")]})
    before = git(repo, "rev-parse", "main")
    res = fleet.submit(repo, "--branch", "main", queue=unique_queue())
    assert res.code == 2
    assert "main" in res.stderr and "--allow-main" in res.stderr
    assert "Traceback" not in res.stderr
    assert git(repo, "rev-parse", "main") == before


def test_an_invalid_index_is_refused_before_anything_is_sent(fleet: Fleet, tmp_path: Path) -> None:
    tickets = [ticket("A", "true", ["B"]), ticket("B", "true", ["A"])]
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": tickets})
    res = fleet.submit(repo, "--wait", queue=unique_queue())
    assert res.code == 2
    assert "A -> B -> A" in res.stderr or "B -> A -> B" in res.stderr
    assert "Traceback" not in res.stderr
    assert git(repo, "branch", "--list", "sage/*").strip() == ""


def test_the_eager_schedule_sends_each_ticket_once_its_dependencies_are_committed(
    run: Any,
) -> None:
    tickets = [
        ticket("E1", writes("E1")),
        ticket("E2", "sleep 2; " + writes("E2")),
        ticket("E3", writes("E3", ["E1"]), ["E1"]),
        ticket("E4", writes("E4", ["E2", "E3"]), ["E2", "E3"]),
        ticket("EBAD", "exit 1"),
        ticket("EBLK", writes("EBLK"), ["EBAD"]),
    ]
    repo, res = run(tickets, "--schedule", "eager", expect=1)
    data = res.data
    assert sorted(data["completed"]) == ["E1", "E2", "E3", "E4"]
    assert list(data["deferred"]) == ["EBAD"]
    assert data["blocked"] == ["EBLK"]
    order = ticket_log(repo, data["branch"])
    # E3 needs only E1, so it does not wait for the slow E2 as a batch barrier would make it
    assert order.index("E3") < order.index("E2") < order.index("E4")


def test_a_ticket_over_its_timeout_is_deferred_and_its_processes_killed(run: Any) -> None:
    tickets = [ticket("SLOW", "sleep 30 & sleep 30; echo never > never.txt", timeout=1)]
    _repo, res = run(tickets, expect=1)
    assert "timed out after 1 s" in res.data["deferred"]["SLOW"]


def test_a_ticket_with_retries_is_run_again_before_it_is_deferred(run: Any) -> None:
    flaky = (
        "n=$(cat /tmp/sage-flaky-$SAGE_RUN_ID 2>/dev/null || echo 0); n=$((n+1)); "
        "echo $n > /tmp/sage-flaky-$SAGE_RUN_ID; "
        '[ "$n" -ge 2 ] && rm /tmp/sage-flaky-$SAGE_RUN_ID && echo ok > flaky.txt'
    )
    _repo, res = run([ticket("FLAKY", flaky, retries=2)], expect=0)
    row = next(t for t in res.data["tickets"] if t["id"] == "FLAKY")
    assert row["attempts"] == 2


def test_without_wait_stdout_holds_only_the_run_id_and_status_follows_the_run(
    fleet: Fleet, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": [ticket("Q", "true")]})
    queue = unique_queue()
    node = fleet.start_commit(repo, queue)
    try:
        res = fleet.submit(repo, queue=queue)
        assert res.code == 0, res.stderr
        run_id = res.stdout.strip()
        assert len(run_id) == 12 and run_id.isalnum(), res.stdout
        assert run_id in res.stderr  # the person still sees the plan and the run

        def finished() -> bool:
            st = fleet.submit(repo, "status", run_id, "--json", queue=queue)
            return st.code == 0 and '"FINISHED"' in st.stdout

        assert wait_until(finished, timeout=60, interval=0.5), fleet.logs()
        assert ticket_log(repo, f"sage/run-{run_id}") == ["Q"]
    finally:
        fleet.kill(node)
