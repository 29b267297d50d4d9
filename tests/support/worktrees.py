"""A ticket worker's worktrees seen from outside: what they hold, what git ran in them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from sage_tasks.gitops import Mirror, Patch, capture_patch
from tests.support.gitrepo import INDEX, checkout, git

#: the largest patch the probes capture
MAX = 1 << 20


def snapshot(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every path under ``root`` but ``.git``: its kind and mode, and a file's bytes."""
    seen: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d != ".git"]
            filenames = [f for f in filenames if f != ".git"]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = os.path.normpath(os.path.join(rel, name))
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                seen[key] = ("dir", b"")
            elif stat.S_ISLNK(st.st_mode):
                seen[key] = ("link", os.readlink(path).encode())
            elif not stat.S_ISREG(st.st_mode):  # a fifo, socket or device: never opened
                seen[key] = (f"special{stat.S_IFMT(st.st_mode):o}", b"")
            else:
                exe = "x" if st.st_mode & 0o100 else "-"
                seen[key] = (f"file{exe}{stat.S_IMODE(st.st_mode):o}", path.read_bytes())
    return seen


def assert_clean_checkout(path: Path, head: str, fresh: Path) -> None:
    """``path`` is exactly a clean detached checkout of ``head`` (as ``fresh`` is)."""
    assert snapshot(path) == snapshot(fresh)
    assert git(path, "rev-parse", "HEAD").strip() == head
    assert git(path, "symbolic-ref", "-q", "HEAD", check=False) == ""
    assert git(path, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""
    assert {ln[:2] for ln in git(path, "ls-files", "-v").splitlines()} == {"H "}
    assert git(path, "diff", "--cached", "--name-only", head) == ""
    assert git(path, "stash", "list") == ""


def fresh_clones(origin: Path, root: Path) -> Callable[[str], Path]:
    """A function giving a fresh clone of ``origin`` at a commit (made once, under
    ``root``), to compare a kept worktree with."""

    def make(sha: str) -> Path:
        dest = root / f"fresh-{sha[:12]}"
        if not dest.exists():
            checkout(origin, sha, dest)
        return dest

    return make


def sh(path: Path, script: str) -> None:
    """Run ``script`` in ``path`` as a ticket's command would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t")
    env.update(GIT_COMMITTER_EMAIL="t@e")
    subprocess.run(["/bin/sh", "-ec", script], cwd=path, env=env, check=True)


def reference_patch(origin: Path, tmp: Path, head: str, script: str) -> bytes:
    """The patch of ``script`` in a fresh clone at ``head`` (``git add -A``, then the diff)."""
    dest = tmp / f"reference-{os.urandom(4).hex()}"
    checkout(origin, head, dest)
    sh(dest, script)
    return capture_patch(dest, head, exclude=[INDEX], max_bytes=MAX).data


def commit_patch(origin: Path, data: bytes) -> str:
    """Commit a ticket's patch on ``main`` of ``origin``, as the commit queue does."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        head = git(origin, "rev-parse", "main").strip()
        git(origin, "read-tree", head, env=env)
        git(origin, "apply", "--cached", input=data, env=env)
        tree = git(origin, "write-tree", env=env).strip()
    sha = git(origin, "commit-tree", tree, "-p", head, "-m", "ticket").strip()
    git(origin, "update-ref", "refs/heads/main", sha, head)
    return sha


def ticket(mirror: Mirror, head: str, script: str, *, capture: bool = True) -> Patch | None:
    """One ticket as the ticket runner plays it: its command, then its patch captured."""
    with mirror.worktree(head) as path:
        sh(path, script)
        if not capture:
            return None
        patch = take_patch(mirror, path, head)
        mirror.captured(path)
        return patch


def take_patch(mirror: Mirror, path: Path, head: str) -> Patch:
    """The patch of a ticket's worktree ``path`` against ``head``, as the ticket runner takes it."""
    return capture_patch(
        path,
        head,
        exclude=[INDEX],
        max_bytes=MAX,
        git_dir=mirror.git_dir(path),
        untracked=mirror.may_hold_untracked(path),
    )


def _repositories(mirror: Mirror) -> list[Path]:
    """The worktrees' own repositories of ``mirror`` (see :mod:`sage_tasks.gitops.slotrepo`)."""
    if not mirror.repos.is_dir():
        return []
    return sorted(p for p in mirror.repos.iterdir() if p.name.startswith(f"{mirror.key}-"))


def worktree_listings(mirror: Mirror) -> list[str]:
    """``git worktree list --porcelain``'s entry of each worktree of ``mirror`` (the bare
    repositories themselves left out): the mirror's own, and each worktree repository's."""
    found: list[str] = []
    for repo in [mirror.path, *_repositories(mirror)]:
        if (repo / "HEAD").exists():
            out = git(repo, "worktree", "list", "--porcelain")
            found += [e for e in out.strip().split("\n\n") if e][1:]
    return found


def worktrees_of(mirror: Mirror) -> list[str]:
    """The worktrees git knows for ``mirror`` (in its repositories; bare ones left out)."""
    return [entry.splitlines()[0].split(" ", 1)[1] for entry in worktree_listings(mirror)]


def admin_dirs(mirror: Mirror) -> list[str]:
    """The names of the per-worktree git directories of ``mirror``'s worktrees."""
    roots = [mirror.path / "worktrees"] + [r / "worktrees" for r in _repositories(mirror)]
    return sorted(name for root in roots if root.is_dir() for name in os.listdir(root))


class GitTrace:
    """The git commands this process (and its children) start, from git's own trace.

    ``GIT_TRACE2_EVENT`` names a file every git process appends its events
    to; :meth:`commands` reads the command lines of those started since the
    last :meth:`mark`, without the ``-c`` settings and ``--git-dir`` and
    ``--work-tree`` options sage-tasks puts first.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = 0

    def mark(self) -> None:
        """Forget the commands so far."""
        self._seen = self._size()

    def _size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def commands(self) -> list[str]:
        """``"checkout --force ..."``-like lines of the git commands started since the mark."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self._seen)
            lines = f.read().splitlines()
        found = []
        for line in lines:
            event = json.loads(line)
            if event.get("event") == "start":
                found.append(" ".join(_without_options(event["argv"][1:])))
        return found


def _without_options(argv: list[str]) -> list[str]:
    """``argv`` without the global options that come before git's sub-command."""
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in ("-c", "--git-dir", "--work-tree", "-C") and rest:
            rest.pop(0)
    return rest
