"""Real git repositories for tests: build one from a dict of files, clone it, inspect it."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

INDEX = ".sage/tickets/index.json"

#: a fixed identity and no user or system config, so tests behave the same on any host
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(
    repo: Path,
    *args: str,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> str:
    """Run git in ``repo``; its stdout as text."""
    full_env = {**os.environ, **GIT_ENV, **(env or {})}
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        if env is None or var not in env:
            full_env.pop(var, None)
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], input=input, capture_output=True, env=full_env, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr.decode()}")
    return proc.stdout.decode("utf-8", "surrogateescape")


def index_bytes(index: dict[str, Any]) -> bytes:
    """An index as sage-tasks writes it: 2-space indent, trailing newline."""
    return (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode()


def _write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def make_repo(
    path: Path,
    files: dict[str, str | bytes],
    index: dict[str, Any] | None = None,
    bare: bool = False,
    *,
    index_path: str = INDEX,
    branch: str = "main",
    object_format: str = "sha1",
) -> Path:
    """A repository at ``path`` whose ``branch`` has one commit: ``files`` plus the ticket index.

    ``index`` None means an index with no tickets. A non-bare repository has
    ``branch`` checked out and a clean work tree; a bare one is built without
    any work tree of its own. ``object_format``: git's ``sha1`` or ``sha256``.
    """
    data = dict(files)
    data[index_path] = index_bytes(
        index if index is not None else {"version": "1.0", "tickets": []}
    )
    path.mkdir(parents=True, exist_ok=True)
    init = ["init", "-q", f"--initial-branch={branch}", f"--object-format={object_format}"]
    if bare:
        git(path, *init, "--bare")
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / "work"
            work.mkdir()
            _write_tree(work, data)
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            git(path, "--work-tree", str(work), "add", "-A", env=env)
            tree = git(path, "write-tree", env=env).strip()
        sha = git(path, "commit-tree", tree, "-m", "initial").strip()
        git(path, "update-ref", f"refs/heads/{branch}", sha)
    else:
        git(path, *init)
        _write_tree(path, data)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "initial")
    git(path, "config", "user.name", GIT_ENV["GIT_COMMITTER_NAME"])
    git(path, "config", "user.email", GIT_ENV["GIT_COMMITTER_EMAIL"])
    return path


def make_bare_clone(src: Path, dest: Path) -> Path:
    """A bare clone of ``src`` at ``dest`` (its branches as branches)."""
    git(src.parent, "clone", "-q", "--bare", str(src), str(dest))
    git(dest, "config", "user.name", GIT_ENV["GIT_COMMITTER_NAME"])
    git(dest, "config", "user.email", GIT_ENV["GIT_COMMITTER_EMAIL"])
    return dest


def commit_files(
    repo: Path, branch: str, files: dict[str, str | bytes | None], message: str = "change"
) -> str:
    """Add a commit on ``branch`` changing ``files`` (None deletes), without a work tree."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        head = git(repo, "rev-parse", f"refs/heads/{branch}").strip()
        git(repo, "read-tree", head, env=env)
        lines = []
        for name, content in files.items():
            if content is None:
                lines.append(f"0 {'0' * 40}\t{name}\n")
                continue
            raw = content.encode() if isinstance(content, str) else content
            blob = git(repo, "hash-object", "-w", "--stdin", input=raw).strip()
            lines.append(f"100644 {blob}\t{name}\n")
        git(repo, "update-index", "--index-info", input="".join(lines).encode(), env=env)
        tree = git(repo, "write-tree", env=env).strip()
    sha = git(repo, "commit-tree", tree, "-p", head, "-m", message).strip()
    git(repo, "update-ref", f"refs/heads/{branch}", sha, head)
    return sha


def read_file(repo: Path, ref: str, path: str) -> bytes | None:
    """The content of ``path`` at ``ref``, or None when it is not there."""
    proc = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "blob", f"{ref}:{path}"],
        capture_output=True,
        check=False,
    )
    return proc.stdout if proc.returncode == 0 else None


def read_index(repo: Path, ref: str, index_path: str = INDEX) -> dict[str, Any]:
    """The ticket index at ``ref``, parsed."""
    data = read_file(repo, ref, index_path)
    assert data is not None, f"no {index_path} at {ref}"
    parsed: dict[str, Any] = json.loads(data)
    return parsed


def ticket_state(repo: Path, ref: str, tid: str, index_path: str = INDEX) -> dict[str, Any]:
    """One ticket's object in the index at ``ref``."""
    for item in read_index(repo, ref, index_path)["tickets"]:
        if item["id"] == tid:
            found: dict[str, Any] = item
            return found
    raise AssertionError(f"{tid} not in the index at {ref}")


def changed_paths(repo: Path, old: str, new: str) -> list[str]:
    """Paths that differ between two commits."""
    out = git(repo, "diff", "--name-only", "--no-renames", old, new)
    return sorted(p for p in out.splitlines() if p)


def commit_count(repo: Path, spec: str) -> int:
    """How many commits ``git rev-list`` counts for ``spec`` (e.g. ``main..branch``)."""
    return int(git(repo, "rev-list", "--count", spec).strip())


def checkout(repo: Path, ref: str, dest: Path) -> Path:
    """A non-bare clone of ``repo`` at ``dest`` with ``ref`` checked out (detached)."""
    git(dest.parent, "clone", "-q", "--no-checkout", str(repo), str(dest))
    git(dest, "checkout", "-q", "--detach", ref)
    return dest


def work_tree_files(repo: Path) -> dict[str, bytes]:
    """Every file of ``repo``'s work tree (outside ``.git``), by path: its content."""
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(repo).parts
    }


def edit_tree(root: Path, changes: dict[str, str | bytes | None]) -> None:
    """Write (str/bytes) or delete (None) files under ``root``."""
    for name, content in changes.items():
        path = root / name
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def make_patch(
    repo: Path,
    ref: str,
    changes: dict[str, str | bytes | None],
    dest: Path,
    *,
    exclude: tuple[str, ...] = (INDEX,),
) -> bytes:
    """The patch a ticket worker would capture after making ``changes`` at ``ref`` of ``repo``."""
    from sage_tasks.gitops import capture_patch

    base = git(repo, "rev-parse", ref).strip()
    work = checkout(repo, base, dest)
    edit_tree(work, changes)
    return capture_patch(work, base, exclude=list(exclude), max_bytes=1 << 24).data
