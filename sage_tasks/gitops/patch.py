"""A ticket's patch: every change an executor made to its worktree, as one binary diff."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from sage_tasks.errors import GitError, PatchRejected
from sage_tasks.gitops.process import SAFE_CONFIG, first_line, git_env, run_git
from sage_tasks.gitops.safety import check_patch

_CHUNK = 1 << 16


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


def capture_patch(worktree: Path, base_sha: str, *, exclude: list[str], max_bytes: int) -> Patch:
    """Stage everything in ``worktree`` and diff it against ``base_sha``.

    New, modified, deleted, renamed and binary files and mode changes travel;
    ignored files (``.gitignore``) do not, and neither do the paths in
    ``exclude`` (the ticket index: an executor's edits to it are not taken).
    Raises :class:`PatchRejected` when the patch is over ``max_bytes`` or
    unsafe (see :func:`check_patch`).
    """
    run_git(worktree, "-c", "core.autocrlf=false", "add", "-A", what="staging the worktree")
    pathspec = [f":(exclude,literal){p}" for p in exclude]
    cmd = [
        "git",
        *SAFE_CONFIG,
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
        cmd, cwd=worktree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=git_env()
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
    if size > max_bytes:
        raise PatchRejected(f"patch is {size} bytes, over the limit of {max_bytes}")
    data = b"".join(chunks)
    return Patch(data=data, paths=check_patch(data), size=size)
