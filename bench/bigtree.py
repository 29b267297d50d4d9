"""A big tree: one-line tickets on a 50,000-file repository against a sequential git loop.

    python bench/bigtree.py [--files 50000] [--tickets 40] [--rounds 3]

The repository has ``--files`` files in folders of 100 (500 folders for
50,000) and a ticket index of ``--tickets`` independent tickets, each
appending a line to its own file. Two contenders, alternating for
``--rounds`` rounds (the medians count; one round moves a lot on a busy
machine):

* the sequential git loop: ``git worktree add`` of one worktree, then for
  each ticket ``git checkout --force --detach <head>`` and ``git clean
  -ffdxq`` in it, the ticket's command, ``git add -A`` and ``git diff
  --cached --binary --full-index <head>``, then on a temporary index of the
  repository ``read-tree <head>``, ``apply --cached``, ``write-tree``,
  ``commit-tree`` and ``update-ref`` (no ticket index is rewritten, nothing
  is checked), and ``git worktree remove --force`` at the end: the same
  start and end as sage-tasks' (which makes and removes its worktrees inside
  its time). The loop without its worktree's making and removal is printed
  too;
* ``sage-submit --local --parallel 2 --wait --json`` on a new branch: the
  whole command, timed as a process (its private Redis and workers start
  and stop inside the time). Its worker folder is the repository's own and
  is kept from one run to the next, as for any ``--local`` user: the first
  round makes its worktrees (a cold start, printed as such), later rounds
  take them over. ``SAGE_WORKDIR`` is a folder of the benchmark's, removed
  with it.

Each sage-tasks run is checked: every ticket COMPLETED, one commit each, each
file holding its line. The target is 1.5x the loop's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
INDEX = ".sage/tickets/index.json"
TARGET = 1.5
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


def git(
    cwd: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None
) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, input=input, capture_output=True, env=env or ENV, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.decode()}")
    return proc.stdout.decode("utf-8", "surrogateescape")


def file_name(i: int) -> str:
    return f"src/d{i // 100:03d}/f{i:05d}.txt"


def target_file(t: int, files: int, tickets: int) -> str:
    """Ticket ``t``'s file: spread over the tree."""
    return file_name(t * (files // tickets))


def make_repo(path: Path, files: int, tickets: int) -> Path:
    """A repository with ``files`` one-line files and ``tickets`` independent tickets."""
    index = {
        "version": "1.0",
        "tickets": [
            {
                "id": f"T{t:03d}",
                "title": f"append to {target_file(t, files, tickets)}",
                "state": "UNPROCESSED",
                "priority": "P2",
                "dependencies": [],
                "run": f"echo 'ticket T{t:03d}' >> {target_file(t, files, tickets)}",
            }
            for t in range(tickets)
        ],
    }
    data = (json.dumps(index, indent=2) + "\n").encode()
    git(path.parent, "init", "-q", "-b", "main", str(path))
    stream = [b"commit refs/heads/main\ncommitter bench <bench@example.com> 1700000000 +0000\n"]
    stream.append(b"data 8\ninitial\n")
    entries = [(INDEX, data)] + [(file_name(i), f"file {i}\n".encode()) for i in range(files)]
    for name, content in entries:
        stream.append(b"M 100644 inline %s\ndata %d\n%s\n" % (name.encode(), len(content), content))
    git(path, "fast-import", "--quiet", input=b"".join(stream))
    git(path, "reset", "-q", "--hard", "main")
    git(path, "config", "user.name", "bench")
    git(path, "config", "user.email", "bench@example.com")
    return path


def sequential_loop(
    repo: Path, work: Path, branch: str, commands: list[str], tmp: Path
) -> tuple[float, float]:
    """Seconds for the plain git loop over ``commands``: in all, and without its worktree's
    making and removal (see the module docs)."""
    head = git(repo, "rev-parse", "main").strip()
    git(repo, "update-ref", f"refs/heads/{branch}", head)
    env = {**ENV, "GIT_INDEX_FILE": str(tmp / "loop-index")}
    start = time.perf_counter()
    git(repo, "worktree", "add", "-q", "--detach", str(work), head)
    made = time.perf_counter()
    for t, command in enumerate(commands):
        git(work, "checkout", "--quiet", "--force", "--detach", head)
        git(work, "clean", "-ffdxq")
        subprocess.run(["sh", "-c", command], cwd=work, check=True)
        git(work, "add", "-A")
        patch = git(work, "diff", "--cached", "--binary", "--full-index", head).encode()
        git(repo, "read-tree", head, env=env)
        git(repo, "apply", "--cached", input=patch, env=env)
        tree = git(repo, "write-tree", env=env).strip()
        new = git(repo, "commit-tree", tree, "-p", head, input=f"T{t:03d}\n".encode()).strip()
        git(repo, "update-ref", f"refs/heads/{branch}", new, head)
        head = new
    looped = time.perf_counter()
    git(repo, "worktree", "remove", "--force", str(work))
    return time.perf_counter() - start, looped - made


def sage_run(repo: Path, branch: str, workdir: Path) -> tuple[float, dict[str, object]]:
    """Seconds for ``sage-submit --local --parallel 2 --wait --json`` and its last JSON line."""
    cmd = [str(BIN / "sage-submit"), "--repo", str(repo), "--branch", branch, "--local",
           "--parallel", "2", "--wait", "--json"]  # fmt: skip
    start = time.perf_counter()
    env = {**ENV, "SAGE_WORKDIR": str(workdir)}
    proc = subprocess.run(cmd, capture_output=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sage-submit exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    text, decoder, last = proc.stdout.decode(), json.JSONDecoder(), {}
    pos = 0
    while pos < len(text):  # the last JSON document (--json --wait may stream several)
        if text[pos].isspace():
            pos += 1
            continue
        last, pos = decoder.raw_decode(text, pos)
    return seconds, last


def verify(repo: Path, branch: str, files: int, tickets: int) -> None:
    """Every ticket COMPLETED, exactly one commit each, each file holding its line."""
    doc = json.loads(git(repo, "show", f"{branch}:{INDEX}"))
    states = {t["state"] for t in doc["tickets"]}
    assert states == {"COMPLETED"}, f"states on {branch}: {states}"
    trailers = git(repo, "log", "--format=%(trailers:key=Sage-Ticket,valueonly)", f"main..{branch}")
    ids = [ln.strip() for ln in trailers.splitlines() if ln.strip()]
    assert sorted(ids) == [f"T{t:03d}" for t in range(tickets)], f"commits on {branch}: {ids}"
    for t in (0, tickets - 1):
        text = git(repo, "show", f"{branch}:{target_file(t, files, tickets)}")
        assert text.endswith(f"ticket T{t:03d}\n"), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000, help="files (default 50000)")
    parser.add_argument("--tickets", type=int, default=40, help="tickets (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both (default 3)")
    args = parser.parse_args()
    files, tickets = args.files, args.tickets
    loops: list[float] = []
    bare_loops: list[float] = []
    sages: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sage-bigtree-") as tmpdir:
        tmp = Path(tmpdir)
        started = time.perf_counter()
        repo = make_repo(tmp / "repo", files, tickets)
        print(f"repository of {files} files made in {time.perf_counter() - started:.1f} s")
        commands = [
            f"echo 'ticket T{t:03d}' >> {target_file(t, files, tickets)}" for t in range(tickets)
        ]
        for r in range(args.rounds):
            loop_s, bare_s = sequential_loop(repo, tmp / "loop", f"loop-{r}", commands, tmp)
            sage_s, result = sage_run(repo, f"sage-{r}", tmp / "sage-workdir")
            verify(repo, f"sage-{r}", files, tickets)
            loops.append(tickets / loop_s)
            bare_loops.append(tickets / bare_s)
            sages.append(tickets / sage_s)
            print(
                f"round {r + 1}: sequential loop {loops[-1]:5.2f} tickets/s "
                f"({bare_loops[-1]:5.2f} without its worktree's making and removal), "
                f"sage-tasks --local --parallel 2 {sages[-1]:5.2f} tickets/s "
                f"({sages[-1] / loops[-1]:.2f}x; run {result.get('status')}, "
                f"{result.get('duration_s')} s from first ticket to last commit"
                f"{'; its worktrees made' if r == 0 else ''})"
            )
    loop, bare, sage = (statistics.median(x) for x in (loops, bare_loops, sages))
    print(f"git {git(ROOT, '--version').split()[-1]}, {files} files, {tickets} one-line tickets")
    print(f"sequential git loop (median):        {loop:6.2f} tickets/s")
    print(f"  without its worktree's making and removal: {bare:6.2f} tickets/s")
    print(
        f"sage-submit --local --parallel 2:    {sage:6.2f} tickets/s  ({sage / loop:.2f}x; "
        f"{sage / bare:.2f}x the loop without its worktree)"
    )
    if sage < TARGET * loop:
        print(f"below the target of {TARGET}x the sequential loop")
        sys.exit(1)


if __name__ == "__main__":
    main()
