"""``--conflict-retries``: a ticket whose patch conflicts runs again on the new branch head.

Two siblings edit the same line; the one committed second conflicts, runs
again (inside the same chord in level mode) with the conflicting paths in its
environment and prompt, and completes on top of the other's work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sage_tasks.store import keys
from tests.support.builders import ticket, writes
from tests.support.fleet import Fleet, unique_queue
from tests.support.gitrepo import git, make_repo
from tests.support.runs import states, ticket_log

#: appends the ticket's name to line 1, and notes what a re-run was told
EDIT = (
    'sleep 0.5; printf \'%s %s\\n\' "$(head -n1 shared.txt)" "$SAGE_TICKET_ID" > shared.txt; '
    'if [ -n "$SAGE_CONFLICT_PATHS" ]; then mkdir -p told; '
    'echo "$SAGE_CONFLICT_PATHS" > "told/$SAGE_TICKET_ID.env"; '
    'grep -q "Re-run after a merge conflict" "$SAGE_PROMPT_FILE" '
    '&& grep -q "shared.txt" "$SAGE_PROMPT_FILE" && echo yes > "told/$SAGE_TICKET_ID.prompt"; fi'
)


def siblings() -> list[dict[str, Any]]:
    return [
        ticket("X1", EDIT),
        ticket("X2", EDIT),
        ticket("Y1", writes("Y1"), ["X1"]),
        ticket("Y2", writes("Y2"), ["X2"]),
    ]


def submit(fleet: Fleet, tmp_path: Path, *args: str) -> tuple[Path, dict[str, Any], str]:
    repo = make_repo(
        tmp_path / "repo", {"shared.txt": "zero\n"}, {"version": "1.0", "tickets": siblings()}
    )
    queue = unique_queue()
    node = fleet.start_commit(repo, queue)
    try:
        res = fleet.submit(repo, "--wait", "--json", *args, queue=queue)
    finally:
        fleet.kill(node)
    assert res.code == 0, f"{res.stdout}\n{res.stderr}\n{fleet.logs()}"
    assert res.data is not None
    return repo, res.data, fleet.log(node)


def reruns(fleet: Fleet, run_id: str, tid: str) -> int:
    raw = fleet.redis.client().hget(keys.ticket(run_id, tid), "conflict_reruns")
    return int(raw or 0)


@pytest.mark.parametrize("schedule", ["levels", "eager"])
def test_a_conflicting_sibling_runs_again_on_the_new_head_and_completes(
    fleet: Fleet, tmp_path: Path, schedule: str
) -> None:
    repo, data, log = submit(fleet, tmp_path, "--conflict-retries", "1", "--schedule", schedule)
    branch = data["branch"]
    assert sorted(data["completed"]) == ["X1", "X2", "Y1", "Y2"]
    assert set(states(repo, branch).values()) == {"COMPLETED"}
    line = git(repo, "show", f"{branch}:shared.txt").strip()
    assert line in ("zero X1 X2", "zero X2 X1"), line
    second = line.split()[-1]
    assert reruns(fleet, data["run_id"], second) == 1
    first = {"X1": "X2", "X2": "X1"}[second]
    assert reruns(fleet, data["run_id"], first) == 0
    # the re-run was told where it conflicted, in its environment and its prompt
    assert git(repo, "show", f"{branch}:told/{second}.env").strip() == "shared.txt"
    assert git(repo, "show", f"{branch}:told/{second}.prompt").strip() == "yes"
    row = next(t for t in data["tickets"] if t["id"] == second)
    assert row["attempts"] == 2
    order = ticket_log(repo, branch)
    assert sorted(order) == ["X1", "X2", "Y1", "Y2"]  # one commit each
    if schedule == "levels":
        # the chord of the first batch completed once, after the re-run's commit
        client = fleet.redis.client()
        assert data["batches"] == 2
        assert client.exists(keys.batch_done(data["run_id"], 0))
        ended = float(client.hget(keys.batch(data["run_id"], 0), "ended") or 0)
        committed = float(client.hget(keys.ticket(data["run_id"], second), "ended") or 0)
        assert ended >= committed > 0
        # each batch's barrier ran once: the replaced chain kept its place in the chord
        assert (
            len([x for x in log.splitlines() if "sage.batch_done[" in x and "succeeded" in x]) == 2
        )
        assert order.index(second) < order.index("Y1") and order.index(second) < order.index("Y2")


def test_without_conflict_retries_the_loser_is_deferred_as_before(
    fleet: Fleet, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "repo", {"shared.txt": "zero\n"}, {"version": "1.0", "tickets": siblings()}
    )
    queue = unique_queue()
    node = fleet.start_commit(repo, queue)
    try:
        res = fleet.submit(repo, "--wait", "--json", queue=queue)
    finally:
        fleet.kill(node)
    assert res.code == 1 and res.data is not None
    (loser,) = res.data["deferred"]
    assert res.data["deferred"][loser] == "merge conflict in: shared.txt"


def test_a_ticket_that_conflicts_again_after_its_re_runs_is_deferred(
    fleet: Fleet, tmp_path: Path
) -> None:
    """R conflicts with W, runs again, and conflicts again with V, committed meanwhile."""
    flags = tmp_path / "flags"
    flags.mkdir()
    r_cmd = (
        'if [ -z "$SAGE_CONFLICT_PATHS" ]; then sleep 1; else '
        f"touch {flags}/rerun; i=0; while [ ! -f {flags}/v-done ] && [ $i -lt 200 ]; "
        "do sleep 0.1; i=$((i+1)); done; sleep 1.5; fi; echo R > shared.txt"
    )
    v_cmd = (
        f"i=0; while [ ! -f {flags}/rerun ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; "
        f"echo V > shared.txt; touch {flags}/v-done"
    )
    tickets = [ticket("W", "echo W > shared.txt"), ticket("R", r_cmd), ticket("V", v_cmd, ["W"])]
    repo = make_repo(
        tmp_path / "repo", {"shared.txt": "zero\n"}, {"version": "1.0", "tickets": tickets}
    )
    queue = unique_queue()
    node = fleet.start_commit(repo, queue)
    try:
        res = fleet.submit(
            repo, "--wait", "--json", "--schedule", "eager", "--conflict-retries", "1", queue=queue
        )
    finally:
        fleet.kill(node)
    assert res.code == 1 and res.data is not None, res.stderr
    assert sorted(res.data["completed"]) == ["V", "W"]
    assert res.data["deferred"] == {"R": "merge conflict in: shared.txt (after 1 re-run)"}
    assert reruns(fleet, res.data["run_id"], "R") == 1
    assert git(repo, "show", f"{res.data['branch']}:shared.txt").strip() == "V"
