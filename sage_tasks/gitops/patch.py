"""A ticket's patch: every change an executor made to its worktree, as one binary diff."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from sage_tasks.errors import GitError, PatchRejected
from sage_tasks.gitops.process import SAFE_CONFIG, first_line, git_env, run_git
from sage_tasks.gitops.safety import check_patch

_CHUNK = 1 << 16
_INVALID_PATH_RE = re.compile(r"^error: invalid path '(.*)'$", re.MULTILINE)


@dataclass(frozen=True)
class Patch:
    """A patch as ``git diff --binary --full-index`` writes it, with the paths it touches."""

    data: bytes
    paths: list[str] = field(default_factory=list)
    size: int = 0

    @property
    def empty(self) -> bool:
        """True when the executor changed nothing."""
        return not self.data


def capture_patch(
    worktree: Path,
    base_sha: str,
    *,
    exclude: list[str],
    max_bytes: int,
    git_dir: Path | None = None,
    untracked: bool = True,
) -> Patch:
    """Stage everything in ``worktree`` and diff it against ``base_sha``.

    New, modified, deleted, renamed and binary files and mode changes travel;
    ignored files (``.gitignore``) do not, and neither do the paths in
    ``exclude`` (the ticket index: an executor's edits to it are not taken).
    Raises :class:`PatchRejected` when the patch is over ``max_bytes`` or
    unsafe (see :func:`check_patch`).

    ``git_dir``, when the caller made the worktree and knows its git
    directory (a linked worktree checked out at ``base_sha``): the worktree's
    ``.git`` file must still name it (checked without running git), and git
    is pointed at it explicitly rather than finding it through ``.git``.
    ``untracked`` False: the caller knows that no file appeared since a clean
    checkout (see :meth:`~sage_tasks.gitops.Mirror.may_hold_untracked`), so
    only tracked files are looked at (``git add -u``, not ``-A``).
    """
    # git must find the worktree's own repository, never one above it
    env = {"GIT_CEILING_DIRECTORIES": str(worktree.absolute().parent)}
    where: tuple[str, ...] = ()
    if git_dir is None:
        _check_checkout(worktree, base_sha, env)
    else:
        _check_git_file(worktree, git_dir)
        where = ("--git-dir", str(git_dir), "--work-tree", str(worktree))
    _stage(worktree, where, env, untracked)
    data, size = _diff(worktree, where, env, base_sha, exclude, max_bytes)
    if size > max_bytes:
        raise PatchRejected(f"patch is {size} bytes, over the limit of {max_bytes}")
    return Patch(data=data, paths=check_patch(data), size=size)


def _stage(worktree: Path, where: tuple[str, ...], env: dict[str, str], untracked: bool) -> None:
    """``git add -A`` (``-u``: tracked files only) in ``worktree``; a path git refuses is
    the ticket's unsafe patch."""
    staged = run_git(
        worktree,
        "-c",
        "core.autocrlf=false",
        "-c",
        "core.untrackedCache=false",
        *where,
        "add",
        "-A" if untracked else "-u",
        env=env,
        check=False,
    )
    if staged.returncode == 0:
        return
    refused = _INVALID_PATH_RE.search(staged.stderr.decode("utf-8", "replace"))
    if refused:
        # e.g. sub/.GIT/hooks/...: the command's work cannot travel, whatever else it did
        raise PatchRejected(
            f"unsafe patch: the command wrote {refused.group(1)!r}, a path git refuses",
            path=refused.group(1),
        )
    raise GitError(
        f"staging the worktree failed in {worktree}: {first_line(staged.stderr)}",
        path=str(worktree),
    )


def _diff(
    worktree: Path,
    where: tuple[str, ...],
    env: dict[str, str],
    base_sha: str,
    exclude: list[str],
    max_bytes: int,
) -> tuple[bytes, int]:
    """The staged changes against ``base_sha`` as a binary patch, and its size in bytes;
    over ``max_bytes`` only the size is kept (the patch is read to its end, never held)."""
    pathspec = [f":(exclude,literal){p}" for p in exclude]
    cmd = [
        "git",
        *SAFE_CONFIG,
        *where,
        "diff-index",
        "--cached",
        "-p",
        "--binary",
        "--full-index",
        "-M",
        "--no-ext-diff",
        "--no-textconv",
        "--no-color",
        "--src-prefix=a/",
        "--dst-prefix=b/",
        base_sha,
        "--",
        *(pathspec or ["."]),
    ]
    with subprocess.Popen(
        cmd, cwd=worktree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=git_env(env)
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        chunks: list[bytes] = []
        size = 0
        while chunk := proc.stdout.read(_CHUNK):
            size += len(chunk)
            if size <= max_bytes:
                chunks.append(chunk)
            else:
                chunks.clear()
        stderr = proc.stderr.read()
        code = proc.wait()
    if code != 0:
        raise GitError(f"diffing the worktree {worktree} failed: {first_line(stderr)}")
    return b"".join(chunks), size


def _check_checkout(worktree: Path, base_sha: str, env: dict[str, str]) -> None:
    """Refuse a worktree whose ``.git`` the command removed or replaced.

    Without its repository (or with another one in its place) nothing the
    command did can be diffed against the ticket's base: that is the
    ticket's failure, not the worker's, so it is not retried.
    """
    proc = run_git(
        worktree, "rev-parse", "--show-toplevel", f"{base_sha}^{{commit}}", env=env, check=False
    )
    lines = proc.stdout.decode("utf-8", "surrogateescape").splitlines()
    if proc.returncode != 0 or len(lines) != 2:
        raise PatchRejected(
            f"the command removed or replaced the worktree's .git: {first_line(proc.stderr)}",
            path=".git",
        )
    if Path(lines[0]).resolve() != worktree.resolve():
        raise PatchRejected(
            f"the command replaced the worktree's .git (it now belongs to {lines[0]!r})",
            path=".git",
        )


def _check_git_file(worktree: Path, git_dir: Path) -> None:
    """Refuse a linked worktree whose ``.git`` file no longer names ``git_dir``.

    What :func:`_check_checkout` asks git, read directly: the command must
    not have removed or replaced the ``.git`` file, nor pointed the git
    directory at another repository.
    """
    dot_git = worktree / ".git"
    try:
        if not stat.S_ISREG(os.lstat(dot_git).st_mode):
            raise PatchRejected("the command replaced the worktree's .git", path=".git")
        named = dot_git.read_bytes()
        common = (git_dir / "commondir").read_bytes()
    except OSError as exc:
        raise PatchRejected(
            f"the command removed or replaced the worktree's .git: {exc.strerror}", path=".git"
        ) from None
    if named != f"gitdir: {git_dir}\n".encode() or common != b"../..\n":
        raise PatchRejected(
            "the command replaced the worktree's .git (it names another repository)", path=".git"
        )
