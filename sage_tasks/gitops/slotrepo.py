"""A kept worktree's own repository: what a ticket's git commands write stays in it.

A worktree made with ``git worktree add`` shares its repository's refs,
config, hooks, ``info/`` and object store with every other worktree of that
repository. Had the ticket workers' worktrees been linked to the mirror
itself, one ticket's ``git checkout -b x`` would leave a branch ``x`` that
makes the next ticket's ``git checkout -b x`` fail, its ``git stash`` would
be popped by another ticket, its ``git config`` or hook would change what
git does in every later ticket of the host.

So each kept worktree is linked to a small bare repository of its own
(``repos/<name>``) that borrows the mirror's objects (git's alternates) and
has no refs. Whatever a command writes through git lands there: refs,
stashes, reflogs, config, hooks, objects. :func:`tidy_repository` puts it
back to what :func:`make_repository` made before the next ticket's reset, so
the next command sees nothing of the last one's.

Objects need one step more. A short reset (see :mod:`.worktree`) compares
the files with the index the last capture wrote, and a symlink's entry is
compared by reading its blob, which the capture wrote into this repository
(``git add`` writes loose objects). So the tidy moves the last ticket's
loose objects aside (``stale-objects``) and lists them as a second
alternate, after the mirror's: git looks for a loose object in the mirror
first, so one a command wrote under the id of one of the mirror's never
stands in for it. Nothing else of the last ticket's object store is kept:
git looks in every pack before any loose object, and in alternates' packs
newest first, so a command's pack (its index lists what it likes) would win
over the mirror's; its ``info/`` (more alternates, a commit-graph) would
speak for the mirror's commits too. :func:`drop_stale_objects` removes the
loose objects once the reset is done.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from sage_tasks.gitops.removal import remove_small
from sage_tasks.gitops.worktree import Broken, write_file

#: what git finds in a repository's config file besides the mirror's own settings:
#: no automatic gc or maintenance in a repository that is emptied before every ticket
_EXTRA_CONFIG = "[gc]\n\tauto = 0\n[maintenance]\n\tauto = false\n"
#: the (unborn) branch HEAD names: a bare repository needs one; no ticket sees it
_HEAD = "ref: refs/heads/main\n"
#: where the last ticket's objects wait until the reset is done
STALE = "stale-objects"
#: the folders git needs to take a directory for a repository
_FOLDERS = ("refs/heads", "refs/tags", "objects/info", "objects/pack", "info")
#: a folder of loose objects (what of the last ticket's objects the reset may read)
_LOOSE = re.compile(r"[0-9a-f]{2}")


def config_text(mirror: Path) -> str:
    """The config of a worktree's repository: the mirror's settings as it was made.

    The copy kept aside when the mirror was made (``sage-pristine``) when there
    is one; a mirror made before such copies were kept gives its config as now.
    """
    for source in (mirror / "sage-pristine" / "config", mirror / "config"):
        try:
            text = source.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            continue
        return text if text.endswith("\n") or not text else text + "\n"
    return ""


def make_repository(repo: Path, mirror: Path, branch: str = "", sha: str = "") -> None:
    """Make ``repo``: a bare repository that borrows ``mirror``'s objects, with no refs
    but ``branch`` at ``sha`` when given."""
    repo.mkdir(parents=True)
    _fill(repo, mirror, branch, sha)


def tidy_repository(
    repo: Path, mirror: Path, worktree_name: str, branch: str = "", sha: str = ""
) -> None:
    """Put ``repo`` back as :func:`make_repository` made it, its worktree's git directory
    (``worktrees/<worktree_name>``, which :func:`~.worktree.tidy_admin` checks) kept.

    Refs, reflogs, stashes, hooks, ``info/`` and any other worktree registered there
    go; the loose objects the last ticket wrote are moved aside, the rest of its
    objects go (see the module docs); config, HEAD, the alternates and ``branch`` (at
    ``sha``) are written again where they differ. Only what differs from a fresh
    repository is touched (a ticket runs this once). Raises :class:`~.worktree.Broken` when
    ``repo`` or its worktree's git directory is not a plain folder.
    """
    folders = (repo, repo / "worktrees", repo / "worktrees" / worktree_name)
    if not all(_is_folder(folder) for folder in folders):
        raise Broken("the worktree's repository is not a folder")
    stale = repo / STALE
    remove_small(stale)  # left by a process that stopped between tidy and reset
    # listed first: the rename below adds an entry a listing under way may show
    with os.scandir(repo) as listing:
        entries = list(listing)
    for entry in entries:
        name, folder = entry.name, entry.is_dir(follow_symlinks=False)
        if name == "worktrees":
            _keep_only(entry.path, {worktree_name})
        elif name == "objects" and folder:
            if not _plain_objects(entry.path):
                os.rename(entry.path, stale)
                _keep_loose(stale)
        elif name == "refs" and folder:
            _tidy_refs(entry.path, branch)
        elif name == "info" and folder:
            _keep_only(entry.path, set())
        elif name not in ("HEAD", "config") or folder:
            remove_small(Path(entry.path))
    _fill(repo, mirror, branch, sha, stale=_is_folder(stale))


def drop_stale_objects(repo: Path, mirror: Path) -> None:
    """Remove the last ticket's objects :func:`tidy_repository` kept for the reset."""
    stale = repo / STALE
    if _is_folder(stale):
        _put(repo / "objects" / "info" / "alternates", _alternates(mirror))
        remove_small(stale)


def _fill(repo: Path, mirror: Path, branch: str, sha: str, *, stale: bool = False) -> None:
    """Write what a fresh worktree repository holds into ``repo`` (emptied, or new)."""
    for folder in _FOLDERS:
        (repo / folder).mkdir(parents=True, exist_ok=True)
    _put(repo / "HEAD", _HEAD)
    _put(repo / "config", config_text(mirror) + _EXTRA_CONFIG)
    extra = f"{(repo / STALE).resolve()}\n" if stale else ""
    _put(repo / "objects" / "info" / "alternates", _alternates(mirror) + extra)
    if branch and sha:
        ref = repo / "refs" / "heads" / branch
        ref.parent.mkdir(parents=True, exist_ok=True)
        _put(ref, f"{sha}\n")


def _keep_loose(objects: Path) -> None:
    """Remove from ``objects`` all but its folders of loose objects: packs, ``info/``
    (see the module docs) and anything else."""
    with os.scandir(objects) as entries:
        gone = [
            Path(e.path)
            for e in entries
            if not (_LOOSE.fullmatch(e.name) and e.is_dir(follow_symlinks=False))
        ]
    for path in gone:
        remove_small(path)


def _keep_only(folder: str, names: set[str]) -> None:
    """Remove every entry of ``folder`` not named in ``names``."""
    with os.scandir(folder) as entries:
        gone = [Path(e.path) for e in entries if e.name not in names]
    for path in gone:
        remove_small(path)


def _plain_objects(objects: str) -> bool:
    """True when ``objects`` holds only what :func:`_fill` writes: ``info/alternates`` and
    an empty ``pack/`` (no object a command wrote, no other alternate's list)."""
    try:
        with os.scandir(objects) as entries:
            if sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries) != [
                ("info", True),
                ("pack", True),
            ]:
                return False
        return not os.listdir(f"{objects}/pack") and os.listdir(f"{objects}/info") == ["alternates"]
    except OSError:
        return False


def _tidy_refs(refs: str, branch: str) -> None:
    """Remove every ref (and folder of refs) under ``refs`` but ``heads/<branch>`` and the
    folders leading to it, and empty ``heads/`` and ``tags/``."""
    keep = {"heads", "tags"}
    if branch:
        parts = f"heads/{branch}".split("/")
        keep.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    folders = [""]
    while folders:
        rel = folders.pop()
        with os.scandir(f"{refs}/{rel}" if rel else refs) as entries:
            found = [(f"{rel}/{e.name}" if rel else e.name, e) for e in entries]
        for name, entry in found:
            if name not in keep:
                remove_small(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                folders.append(name)
            elif name != f"heads/{branch}":
                remove_small(Path(entry.path))


def _alternates(mirror: Path) -> str:
    """The alternates of a worktree's repository: the mirror's object store."""
    return f"{(mirror / 'objects').resolve()}\n"


def _put(path: Path, text: str) -> None:
    """``path`` holding ``text``: left alone when it does, else a new file (never written
    through a symlink)."""
    data = text.encode("utf-8", "surrogateescape")
    try:
        # not blocking on a fifo a command put there; a folder fails to read
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if f.read(len(data) + 1) == data:
                return
    except OSError:
        pass
    remove_small(path)  # a folder or fifo there too
    write_file(path, text)


def _is_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
