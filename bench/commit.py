"""Commit throughput: ``CommitTarget.commit`` against a raw plumbing loop, on one machine.

    python bench/commit.py [-n 300]

Each commit adds one small file. The baseline is the cheapest honest
plumbing loop (four git processes a commit: ``update-index``, ``write-tree``,
``commit-tree``, ``update-ref``, with blobs written by one long-lived
``hash-object --stdin-paths`` and the temporary index read once); it neither
reads nor rewrites the ticket index and checks nothing. The commit path does
all of that: the idempotency check, the index rewrite, the apply, the
compare-and-swap. Two modes are timed: one :class:`Repository` kept open (a
commit worker) and a new ``CommitTarget(path, ...)`` per commit. The three
loops run in interleaved blocks, so load from other processes on the machine
falls on all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sage_tasks.core.index import State
from sage_tasks.gitops import CommitTarget, Repository

INDEX = ".sage/tickets/index.json"
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


def git(
    repo: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None
) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=repo, input=input, capture_output=True, env=env or ENV, check=True
    )
    return proc.stdout.decode().strip()


def make_repo(path: Path, n: int) -> Path:
    """A bare repository whose index has ``n`` tickets per mode (T-, P-)."""
    tickets = [
        {
            "id": f"{p}-{i:04d}",
            "title": f"bench ticket {i}",
            "state": "UNPROCESSED",
            "priority": "P2",
            "dependencies": [],
            "run": "true",
        }
        for p in ("T", "P")
        for i in range(n)
    ]
    index = (json.dumps({"version": "1.0", "tickets": tickets}, indent=2) + "\n").encode()
    git(path.parent, "init", "-q", "--bare", str(path))
    blob = git(path, "hash-object", "-w", "--stdin", input=index)
    env = {**ENV, "GIT_INDEX_FILE": str(path / "bench-index")}
    git(path, "update-index", "--add", "--cacheinfo", f"100644,{blob},{INDEX}", env=env)
    tree = git(path, "write-tree", env=env)
    (path / "bench-index").unlink()
    sha = git(path, "commit-tree", tree, "-m", "initial")
    for branch in ("main", "open", "fresh", "raw"):
        git(path, "update-ref", f"refs/heads/{branch}", sha)
    git(path, "config", "user.name", "bench")
    git(path, "config", "user.email", "bench@example.com")
    return path


def new_file_patch(name: str, text: str) -> bytes:
    return (
        f"diff --git a/{name} b/{name}\nnew file mode 100644\n--- /dev/null\n+++ b/{name}\n"
        f"@@ -0,0 +1 @@\n+{text}\n"
    ).encode()


class Raw:
    """The baseline loop, resumable so that it can be interleaved with the others."""

    def __init__(self, repo: Path, tmp: Path) -> None:
        self.repo, self.tmp = repo, tmp
        self.env = {**ENV, "GIT_INDEX_FILE": str(tmp / "raw-index")}
        self.head = git(repo, "rev-parse", "refs/heads/raw")
        git(repo, "read-tree", self.head, env=self.env)
        self.hasher = subprocess.Popen(
            ["git", "hash-object", "-w", "--stdin-paths", "--no-filters"],
            cwd=repo,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=ENV,
        )

    def commit(self, i: int) -> None:
        assert self.hasher.stdin is not None and self.hasher.stdout is not None
        src = self.tmp / "content"
        src.write_text(f"raw {i}\n")
        self.hasher.stdin.write(f"{src}\n".encode())
        self.hasher.stdin.flush()
        blob = self.hasher.stdout.readline().decode().strip()
        git(
            self.repo,
            "update-index",
            "--add",
            "--cacheinfo",
            f"100644,{blob},raw/f{i}.txt",
            env=self.env,
        )
        tree = git(self.repo, "write-tree", env=self.env)
        new = git(self.repo, "commit-tree", tree, "-p", self.head, input=f"raw {i}\n".encode())
        git(self.repo, "update-ref", "refs/heads/raw", new, self.head)
        self.head = new

    def close(self) -> None:
        assert self.hasher.stdin is not None
        self.hasher.stdin.close()
        self.hasher.wait()


def run(repo: Path, n: int, tmp: Path, block: int) -> dict[str, float]:
    """Commits/s of each loop, run in interleaved blocks so machine load hits all alike."""
    spent = {"raw": 0.0, "open": 0.0, "fresh": 0.0}
    raw = Raw(repo, tmp)
    opened = Repository(repo)
    kept = CommitTarget(opened, "open")

    def one_open(i: int) -> None:
        kept.commit(
            f"T-{i:04d}", "t", "bench", new_file_patch(f"open/f{i}.txt", str(i)), State.COMPLETED
        )

    def one_fresh(i: int) -> None:
        with CommitTarget(repo, "fresh") as target:
            target.commit(
                f"P-{i:04d}",
                "t",
                "bench",
                new_file_patch(f"fresh/f{i}.txt", str(i)),
                State.COMPLETED,
            )

    loops = {"raw": raw.commit, "open": one_open, "fresh": one_fresh}
    for first in range(0, n, block):
        for name, loop in loops.items():
            start = time.perf_counter()
            for i in range(first, min(n, first + block)):
                loop(i)
            spent[name] += time.perf_counter() - start
    raw.close()
    opened.close()
    return {name: n / seconds for name, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="commits per loop (default 300)")
    parser.add_argument("--block", type=int, default=25, help="commits per interleaved block")
    args = parser.parse_args()
    n: int = args.n
    with tempfile.TemporaryDirectory(prefix="sage-bench-") as tmpdir:
        tmp = Path(tmpdir)
        repo = make_repo(tmp / "repo.git", n)
        rates = run(repo, n, tmp, args.block)
        raw, opened, fresh = rates["raw"], rates["open"], rates["fresh"]
        size = len(git(repo, "cat-file", "blob", f"refs/heads/open:{INDEX}"))
        assert git(repo, "rev-list", "--count", "main..open") == str(n)
    print(
        f"git {git(Path.cwd(), '--version').split()[-1]}, {n} commits each, "
        f"ticket index {size // 1024} KiB ({2 * n} tickets)"
    )
    print(f"raw plumbing (4 git calls/commit):     {raw:7.1f} commits/s")
    print(
        f"CommitTarget, repository kept open:    {opened:7.1f} commits/s  "
        f"({opened / raw:.0%} of raw)"
    )
    print(
        f"CommitTarget, opened for each commit:  {fresh:7.1f} commits/s  ({fresh / raw:.0%} of raw)"
    )
    if opened < raw / 2:
        print("below the target of 50% of raw plumbing")
        sys.exit(1)


if __name__ == "__main__":
    main()
