"""Commit throughput: ``CommitTarget.commit`` against a raw plumbing loop, on one machine.

    python bench/commit.py [-n 300] [--big 50000]

Each commit appends one line to a file of the tree (a one-line patch, as a
ticket worker captures it: ``--full-index``). The baseline is the cheapest
honest plumbing loop (four git processes a commit: ``update-index``,
``write-tree``, ``commit-tree``, ``update-ref``, with blobs written by one
long-lived ``hash-object --stdin-paths`` and the temporary index read once)
on a 100-file repository; it neither reads nor rewrites the ticket index and
checks nothing. The commit path does all of that: the idempotency check, the
index rewrite, the apply, the compare-and-swap. Three loops of it are timed:
one :class:`Repository` kept open (a commit worker) on the 100-file tree and
on a ``--big``-file one (500 folders), and a new ``CommitTarget(path, ...)``
per commit on the small tree. The loops run in interleaved blocks, so load
from other processes on the machine falls on all of them alike.
"""

from __future__ import annotations

import argparse
import hashlib
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
#: files of the big tree (500 folders of 100)
FILES_BIG = 50_000


def git(
    repo: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None
) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=repo, input=input, capture_output=True, env=env or ENV, check=True
    )
    return proc.stdout.decode().strip()


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_name(i: int, files: int) -> str:
    """The ``i``-th file of a ``files``-file tree: 100 files a folder."""
    return f"src/d{(i % files) // 100:03d}/f{i % files:05d}.txt"


def make_repo(path: Path, n: int, files: int = 0) -> Path:
    """A bare repository whose index has ``n`` tickets per mode (T-, P-) and ``files`` files."""
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
    stream = [b"commit refs/heads/main\ncommitter bench <bench@example.com> 1700000000 +0000\n"]
    stream.append(b"data 8\ninitial\n")
    for name, data in [(INDEX, index)] + [
        (file_name(i, files), f"line 1 of {i}\n".encode()) for i in range(files)
    ]:
        stream.append(b"M 100644 inline %s\ndata %d\n%s\n" % (name.encode(), len(data), data))
    git(path, "fast-import", "--quiet", input=b"".join(stream))
    sha = git(path, "rev-parse", "refs/heads/main")
    for branch in ("open", "fresh", "raw"):
        git(path, "update-ref", f"refs/heads/{branch}", sha)
    git(path, "config", "user.name", "bench")
    git(path, "config", "user.email", "bench@example.com")
    return path


class Files:
    """The files of a tree as the commits leave them, and one-line patches appending to them."""

    def __init__(self, files: int) -> None:
        self.files = files
        self.content: dict[str, bytes] = {}

    def patch(self, i: int, text: str) -> bytes:
        name = file_name(i, self.files)
        old = self.content.get(name, f"line 1 of {i % self.files}\n".encode())
        new = old + f"{text}\n".encode()
        self.content[name] = new
        lines = old.count(b"\n")
        last = old.rsplit(b"\n", 2)[-2]
        head = (
            f"diff --git a/{name} b/{name}\nindex {blob_id(old)}..{blob_id(new)} 100644\n"
            f"--- a/{name}\n+++ b/{name}\n@@ -{lines} +{lines},2 @@\n"
        )
        return head.encode() + b" " + last + f"\n+{text}\n".encode()


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
            f"100644,{blob},{file_name(i, 100)}",
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


def run(small: Path, big: Path, n: int, tmp: Path, block: int) -> dict[str, float]:
    """Commits/s of each loop, run in interleaved blocks so machine load hits all alike."""
    spent = {"raw": 0.0, "open": 0.0, "big": 0.0, "fresh": 0.0}
    raw = Raw(small, tmp)
    opened, opened_big = Repository(small), Repository(big)
    kept, kept_big = CommitTarget(opened, "open"), CommitTarget(opened_big, "open")
    trees = {"open": Files(100), "big": Files(FILES_BIG), "fresh": Files(100)}

    def one_open(i: int) -> None:
        patch = trees["open"].patch(i, f"open {i}")
        kept.commit(f"T-{i:04d}", "t", "bench", patch, State.COMPLETED)

    def one_big(i: int) -> None:
        patch = trees["big"].patch(i * 97, f"big {i}")
        kept_big.commit(f"T-{i:04d}", "t", "bench", patch, State.COMPLETED)

    def one_fresh(i: int) -> None:
        with CommitTarget(small, "fresh") as target:
            patch = trees["fresh"].patch(i, f"fresh {i}")
            target.commit(f"P-{i:04d}", "t", "bench", patch, State.COMPLETED)

    loops = {"raw": raw.commit, "open": one_open, "big": one_big, "fresh": one_fresh}
    for first in range(0, n, block):
        for name, loop in loops.items():
            start = time.perf_counter()
            for i in range(first, min(n, first + block)):
                loop(i)
            spent[name] += time.perf_counter() - start
    raw.close()
    opened.close()
    opened_big.close()
    return {name: n / seconds for name, seconds in spent.items()}


def main() -> None:
    global FILES_BIG
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="commits per loop (default 300)")
    parser.add_argument("--block", type=int, default=25, help="commits per interleaved block")
    parser.add_argument("--big", type=int, default=FILES_BIG, help="files of the big tree")
    args = parser.parse_args()
    n: int = args.n
    FILES_BIG = args.big
    with tempfile.TemporaryDirectory(prefix="sage-bench-") as tmpdir:
        tmp = Path(tmpdir)
        small = make_repo(tmp / "small.git", n, 100)
        big = make_repo(tmp / "big.git", n, FILES_BIG)
        rates = run(small, big, n, tmp, args.block)
        size = len(git(small, "cat-file", "blob", f"refs/heads/open:{INDEX}"))
        for repo in (small, big):
            assert git(repo, "rev-list", "--count", "main..open") == str(n)
    raw, opened, big_rate, fresh = rates["raw"], rates["open"], rates["big"], rates["fresh"]
    print(
        f"git {git(Path.cwd(), '--version').split()[-1]}, {n} one-line commits each, "
        f"ticket index {size // 1024} KiB ({2 * n} tickets)"
    )
    print(f"raw plumbing (4 git calls/commit), 100 files: {raw:7.1f} commits/s")
    print(
        f"CommitTarget kept open, 100 files:            {opened:7.1f} commits/s  "
        f"({opened / raw:.2f}x raw)"
    )
    print(
        f"CommitTarget kept open, {FILES_BIG} files:        {big_rate:7.1f} commits/s  "
        f"(a commit costs {opened / big_rate:.2f}x one on 100 files)"
    )
    print(
        f"CommitTarget opened for each commit, 100 files: {fresh:5.1f} commits/s  "
        f"({fresh / raw:.2f}x raw)"
    )
    if opened < raw or big_rate * 2 < opened:
        print("below the targets: 1.0x raw plumbing, a big-tree commit within 2x a small one")
        sys.exit(1)


if __name__ == "__main__":
    main()
