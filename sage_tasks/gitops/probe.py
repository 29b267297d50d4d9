"""Read-only questions about git and repositories, for the prerequisite check."""

from __future__ import annotations

from pathlib import Path

from sage_tasks.errors import GitError
from sage_tasks.gitops.process import first_line, run_git


def git_version() -> str:
    """The git binary's version, e.g. ``2.39.5``; :class:`GitError` when git is missing."""
    try:
        proc = run_git(Path.cwd(), "--version", check=False)
    except OSError as exc:
        raise GitError(f"git is not installed: {exc}") from None
    text = proc.stdout.decode().strip()
    return text.removeprefix("git version ").strip()


def url_readable(url: str, branch: str | None = None, *, cwd: Path | None = None) -> str | None:
    """None when ``git ls-remote`` can read ``url``; otherwise git's reason."""
    args = ["ls-remote", "--quiet", url]
    if branch:
        args.append(f"refs/heads/{branch}")
    proc = run_git(cwd or Path.cwd(), *args, check=False)
    if proc.returncode != 0:
        return first_line(proc.stderr) or f"git ls-remote exited with {proc.returncode}"
    return None
