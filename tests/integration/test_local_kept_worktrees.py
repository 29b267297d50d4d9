"""``sage-submit --local`` keeps its ticket worker's worktrees from one run to the next:
the next run's worker adopts them (reset in full first), tickets after a captured one
get the short reset, a ticket that left a process running gets a full one, and what no
run used is removed. Real redis-server, real workers, real git; git's own trace tells
which reset each ticket got.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from sage_tasks.work.executor import survivors
from tests.support.gitrepo import INDEX, git, index_bytes, make_repo, read_file
from tests.support.procs import bin_path, wait_until
from tests.support.worktrees import GitTrace


def chain(*runs: tuple[str, str]) -> dict[str, Any]:
    """An index of tickets that run one after the other (each depends on the one before)."""
    tickets = []
    for i, (tid, run) in enumerate(runs):
        deps = [runs[i - 1][0]] if i else []
        tickets.append({"id": tid, "title": tid, "dependencies": deps, "run": run})
    return {"version": "1.0", "tickets": tickets}


def local_run(repo: Path, env: dict[str, str], branch: str, parallel: int) -> dict[str, Any]:
    proc = subprocess.run(
        [bin_path("sage-submit"), "--repo", str(repo), "--local", "--json",
         "--branch", branch, "--parallel", str(parallel)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def kept(workdir: Path) -> list[str]:
    """The worktrees the repository's ``--local`` folder keeps between runs."""
    (home,) = (workdir / "local").iterdir()
    idle = home / "work" / "idle"
    return sorted(p.name for p in idle.iterdir() if p.is_dir()) if idle.is_dir() else []


def resets(trace: GitTrace) -> list[str]:
    """The kind of each worktree reset in the trace, in order."""
    kinds = []
    for command in trace.commands():
        if command.startswith("checkout -q --force"):
            kinds.append("full")
        elif command.startswith("checkout --quiet --no-overlay"):
            kinds.append("short")
    return kinds


def set_index(repo: Path, index: dict[str, Any]) -> None:
    (repo / INDEX).write_bytes(index_bytes(index))
    git(repo, "commit", "-q", "-am", "tickets")


def test_local_runs_keep_their_worktrees_and_reset_them_as_each_ticket_allows(
    tmp_path: Path,
) -> None:
    first = chain(
        ("A", "echo a > a.txt"),
        ("B", "echo b >> a.txt && mkdir -p d && echo x > d/x.txt"),
        ("C", "echo c > c.log && rm d/x.txt && echo y > d/y.txt"),
    )
    repo = make_repo(tmp_path / "repo", {"README": "r\n", ".gitignore": "*.log\n"}, first)
    workdir = tmp_path / "work"
    trace = GitTrace(tmp_path / "trace.json")
    env = {**os.environ, "SAGE_WORKDIR": str(workdir), "GIT_TRACE2_EVENT": str(trace.path)}

    one = local_run(repo, env, "one", 1)
    assert one["completed"] == ["A", "B", "C"]
    assert read_file(repo, "one", "a.txt") == b"a\nb\n"
    assert read_file(repo, "one", "d/y.txt") == b"y\n" and read_file(repo, "one", "c.log") is None
    # made for A (a new worktree is checked out in full), then the short reset
    assert resets(trace) == ["full", "short", "short"]
    (name,) = kept(workdir)

    # a ticket that leaves a process running (in a session of its own, so that ending the
    # command's process group misses it): the next ticket's reset looks at everything
    pid_file = tmp_path / "daemon.pid"
    daemon = (
        f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 120' > /dev/null 2>&1 < /dev/null &"
        f" while [ ! -s {pid_file} ]; do sleep 0.01; done"
    )
    set_index(
        repo,
        chain(
            ("S1", f"{daemon}; echo s > s.txt"),
            ("S2", "echo t >> s.txt"),
            ("S3", "echo u >> s.txt"),
        ),
    )
    trace.mark()
    try:
        two = local_run(repo, env, "two", 1)
    finally:
        for pid in survivors({"SAGE_TICKET_ID": "S1"}):
            os.kill(pid, signal.SIGKILL)
    assert two["completed"] == ["S1", "S2", "S3"]
    assert read_file(repo, "two", "s.txt") == b"s\nt\nu\n"
    # adopted (in full), full again after S1's leftover process, short after S2
    assert resets(trace) == ["full", "full", "short"]
    assert kept(workdir) == [name]

    # two slots (two tickets that wait for each other): a second worktree is made; with
    # one slot again, the one that run did not use goes
    both = f"[ -e {tmp_path}/m0 ] && [ -e {tmp_path}/m1 ]"
    set_index(repo, {"version": "1.0", "tickets": [
        {"id": f"P{i}", "title": "p", "dependencies": [],
         "run": f"touch {tmp_path}/m{i}; for n in $(seq 600); do {both} && break; sleep 0.1;"
                f" done; {both} && echo {i} > p{i}.txt"}
        for i in range(2)
    ]})  # fmt: skip
    assert local_run(repo, env, "three", 2)["completed"] == ["P0", "P1"]
    assert len(kept(workdir)) == 2 and name in kept(workdir)
    set_index(repo, chain(("Q", "echo q > q.txt")))
    local_run(repo, env, "four", 1)
    assert len(kept(workdir)) == 1
    (home,) = (workdir / "local").iterdir()
    assert not (home / "run").exists()
    assert wait_until(lambda: not survivors({"SAGE_WORKDIR": str(workdir)}), 15)
