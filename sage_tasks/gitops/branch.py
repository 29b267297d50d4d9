"""The run's target branch, prepared by the producer before anything is sent.

Only refs and objects are read or written: a bare repository works, and in a
non-bare one neither the work tree nor ``.git/index`` is touched.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from sage_tasks.errors import RepositoryError
from sage_tasks.gitops.process import first_line, run_git
from sage_tasks.gitops.repository import locate_repo
from sage_tasks.gitops.safety import normal_path

#: branches a run writes to only with ``allow_main``
PROTECTED_BRANCHES = frozenset({"main", "master"})


@dataclass(frozen=True)
class BranchInfo:
    """The target branch: its name, head, and whether this call created it."""

    branch: str
    head_sha: str
    created: bool


def check_branch_name(branch: str) -> None:
    """Raise :class:`RepositoryError` unless ``branch`` is a valid branch name.

    The one check of a branch name (submission, branch preparation, mirror
    fetches, the commit target): git's own rules, asked outside any repository
    so the answer depends on the name alone, and cached per name and process
    so the commit path pays for it once.
    """
    if branch in ("", "@", "HEAD") or branch.startswith("-") or not _valid_branch(branch):
        raise RepositoryError(f"{branch!r} is not a valid branch name", path=branch)


@functools.lru_cache(maxsize=256)
def _valid_branch(branch: str) -> bool:
    """``git check-ref-format --branch``: accepted, and not expanded to another name."""
    proc = run_git(Path(os.sep), "check-ref-format", "--branch", branch, check=False)
    return proc.returncode == 0 and proc.stdout.decode("utf-8", "replace").strip() == branch


def resolve_commit(repo: Path, ref: str) -> str | None:
    """The commit ``ref`` names, or None when it names none."""
    if ref.startswith("-"):
        return None
    proc = run_git(
        repo,
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        f"{ref}^{{commit}}",
        check=False,
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.decode().strip()


def resolve_ref(repo: Path, ref: str) -> str:
    """The commit ``ref`` names; :class:`RepositoryError` naming ``ref`` when it names none."""
    sha = resolve_commit(repo, ref)
    if sha is None:
        raise RepositoryError(f"unknown ref {ref!r} (no such commit)", path=ref)
    return sha


def branch_head(repo: Path, branch: str) -> str | None:
    """The head commit of ``refs/heads/<branch>``, or None when the branch does not exist."""
    return resolve_commit(repo, f"refs/heads/{branch}")


def prepare_branch(repo: Path, branch: str, base: str | None, *, allow_main: bool) -> BranchInfo:
    """Create ``refs/heads/<branch>`` at ``base`` (default HEAD), or keep it if it exists.

    An existing branch is a run being resumed: it is returned as it is
    (``created=False``), whatever ``base`` says. Creation is a compare-and-swap
    against "does not exist", so two producers racing on one name both end up
    on the same branch.
    """
    locate_repo(repo)
    if branch in PROTECTED_BRANCHES and not allow_main:
        raise RepositoryError(f"refusing to write to {branch!r} without --allow-main", path=branch)
    check_branch_name(branch)
    ref = f"refs/heads/{branch}"
    existing = resolve_commit(repo, ref)
    if existing is not None:
        return BranchInfo(branch, existing, created=False)
    start = resolve_commit(repo, base or "HEAD")
    if start is None:
        what = f"base {base!r}" if base else "HEAD (the repository has no commits?)"
        raise RepositoryError(f"cannot resolve {what} to a commit", path=base or "HEAD")
    proc = run_git(repo, "update-ref", "-m", "sage-tasks: start run", ref, start, "", check=False)
    if proc.returncode != 0:
        existing = resolve_commit(repo, ref)
        if existing is None:
            raise RepositoryError(f"cannot create {ref}: {first_line(proc.stderr)}", path=ref)
        return BranchInfo(branch, existing, created=False)
    return BranchInfo(branch, start, created=True)


def read_index_at(repo: Path, ref: str, index_path: str) -> bytes | None:
    """The ticket index file's content at commit ``ref``, or None when it has none.

    Raises :class:`RepositoryError` naming ``ref`` when it names no commit.
    """
    sha = resolve_ref(repo, ref)
    proc = run_git(repo, "cat-file", "blob", f"{sha}:{normal_path(index_path)}", check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout


def working_copy_differs(repo: Path, ref: str, index_path: str) -> bool:
    """True when the index file on disk differs from the one at ``ref`` (for a warning).

    Always False for a bare repository, which has no working copy.
    """
    bare, git_dir = locate_repo(repo)
    if bare:
        return False
    top = run_git(repo, "rev-parse", "--show-toplevel", check=False).stdout.decode().strip()
    root = Path(top) if top else git_dir.parent
    committed = read_index_at(repo, ref, index_path)
    try:
        on_disk: bytes | None = (root / index_path).read_bytes()
    except FileNotFoundError:
        on_disk = None
    except OSError as exc:
        raise RepositoryError(
            f"cannot read {index_path}: {exc.strerror}", path=index_path
        ) from None
    return on_disk != committed
