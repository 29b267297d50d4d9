"""A kept worktree between two tickets: what is checked, and how it becomes a clean checkout.

A ticket worker keeps its worktrees (see :mod:`.mirror`) and brings each back
to a clean checkout of the next ticket's head before the command runs. Two
ways, the same result (nothing of an earlier ticket survives: untracked,
ignored, modified, staged, deleted or re-moded files, empty folders):

* :func:`full_reset`: ``git checkout --force --detach <head>`` and ``git clean
  -ffdx``. Each reads the metadata of every file and folder of the tree
  (50,000 ``lstat`` calls and the whole index written again on a
  50,000-file tree), whatever the worktree held.
* :func:`known_reset`, right after a patch capture that saw every file
  (:func:`~sage_tasks.gitops.patch.capture_patch` stages everything with
  ``git add -A``, so the index then equals the worktree, ignored files
  aside), provided the index is the one the capture wrote: the paths where
  that index differs from the head (``git diff-index --cached``: the
  ticket's own changes and what the branch gained meanwhile) are checked out
  from the head, ``git clean -ffdx`` removes what is not in the index
  (ignored files, empty folders, what the checkout dropped from the index),
  and the index is checked to be the head's tree. No file outside those
  paths is looked at.

``git clean`` leaves fifos, sockets and device files where git tracks the
folder (it removes them only with an untracked folder): a command's unix
socket would make the next ticket's ``bind`` fail. Both resets unlink them
(:func:`remove_special`): the full one anywhere, the short one in the
folders that got new entries.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import subprocess
from pathlib import Path

from sage_tasks.gitops.process import run_git
from sage_tasks.gitops.removal import REMOVERS, remove_tree

#: what a worktree's git directory holds right after a checkout; anything else is removed
ADMIN_FILES = frozenset({"HEAD", "commondir", "gitdir", "index"})
#: a reset touching more paths than this checks the whole tree out instead (git matches
#: each index entry against every path given: a long list costs more than a full checkout)
KNOWN_RESET_MAX_PATHS = 128
#: settings for resetting a worktree that a command may have changed in the shared config
RESET_CONFIG = (
    "-c",
    "core.autocrlf=false",
    "-c",
    "core.sparseCheckout=false",
    "-c",
    "core.untrackedCache=false",
    "-c",
    "core.trustctime=true",
    "-c",
    "core.checkStat=default",
    # a big checkout (a new worktree) writes its files from several processes: the
    # disk, not the CPU, is what a 50,000-file checkout waits for
    "-c",
    f"checkout.workers={REMOVERS}",
)

#: the identity of an index file: inode, size, modification and change times (ns)
IndexStamp = tuple[int, int, int, int]


class Broken(Exception):
    """A kept worktree that must not be reused."""


def admin_of(worktree: Path) -> Path:
    """The git directory a worktree's ``.git`` file names (it must be a plain file)."""
    dot_git = worktree / ".git"
    if not stat.S_ISREG(os.lstat(dot_git).st_mode):
        raise Broken(".git is not a file")
    text = dot_git.read_bytes().decode("utf-8", "surrogateescape")
    if not text.startswith("gitdir: ") or not text.endswith("\n") or text.count("\n") != 1:
        raise Broken(".git file")
    return Path(text[len("gitdir: ") : -1])


def tidy_admin(admin: Path) -> None:
    """Put a worktree's git directory back to what a checkout leaves.

    A command's merge, rebase, bisect or sparse-checkout state, its per-worktree
    config, reflog and locks all go; the files git needs must be plain files.
    """
    for entry in os.scandir(admin):
        if entry.name in ADMIN_FILES:
            if not entry.is_file(follow_symlinks=False):
                raise Broken(f"{entry.name} is not a file")
        else:
            remove_tree(Path(entry.path))
    if (admin / "commondir").read_bytes() != b"../..\n":
        raise Broken("commondir changed")


def index_gitlinks(index: Path, oid_size: int = 20) -> list[str] | None:
    """The gitlinks (submodules) of git's index, or None when an entry has a flag we
    never set (``oid_size``: 20 bytes in a SHA-1 repository, 32 in a SHA-256 one).

    ``git checkout --force`` keeps assume-unchanged and skip-worktree bits
    (and a skip-worktree file's content), so an index with any such flag, or
    in a format other than the plain version 2, is not reused (None). A
    missing index is fine: the checkout writes every file.
    """
    try:
        data = index.read_bytes()
    except FileNotFoundError:
        return []
    if len(data) < 12 or data[:4] != b"DIRC":
        return None
    version, count = struct.unpack_from(">II", data, 4)
    if version != 2:
        return None
    offset, size = 12, len(data)
    links: list[str] = []
    at = 40 + oid_size  # an entry's flags: after its stat fields and object id
    try:
        for _ in range(count):  # a hot loop on a big tree: bytes, not struct
            flags = (data[offset + at] << 8) | data[offset + at + 1]
            if flags & 0xC000:  # assume-valid, extended (skip-worktree, intent-to-add)
                return None
            length = flags & 0x0FFF
            if length == 0x0FFF:
                length = data.index(b"\0", offset + at + 2) - offset - at - 2
            if data[offset + 26] == 0xE0:  # mode 160000: a gitlink
                name = data[offset + at + 2 : offset + at + 2 + length]
                links.append(name.decode("utf-8", "surrogateescape"))
            offset += (at + 2 + length + 8) & ~7
            if offset > size:
                return None
    except (IndexError, ValueError):
        return None
    return links


def empty_gitlinks(path: Path, links: list[str]) -> None:
    """Empty the folders of the gitlinks ``links`` in the worktree ``path``.

    A fresh checkout leaves a submodule's folder empty until it is initialised,
    and neither ``git checkout --force`` nor ``git clean`` looks inside it: what
    a command wrote there (``git submodule update --init`` among others) would
    reach the next ticket.
    """
    for name in links:
        folder = path / name
        if not stat.S_ISDIR(_lmode(folder)):
            continue
        with os.scandir(folder) as entries:
            inside = [Path(entry.path) for entry in entries]
        for entry in inside:
            remove_tree(entry)


def index_stamp(admin: Path) -> IndexStamp | None:
    """The identity of the worktree's index file now (None: there is none)."""
    try:
        st = os.lstat(admin / "index")
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def write_file(path: Path, text: str) -> None:
    """Replace ``path`` with a new file holding ``text`` (never through a symlink)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode("utf-8", "surrogateescape"))


def _git(
    path: Path, admin: Path, *args: str, what: str, input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """``git <args>`` on the worktree ``path`` whose git directory is ``admin``."""
    where = ("--git-dir", str(admin), "--work-tree", str(path))
    return run_git(path, *RESET_CONFIG, *where, *args, input=input, check=check, what=what)


def full_reset(path: Path, admin: Path, sha: str, *, clean: bool) -> None:
    """Check ``sha`` out in ``path`` over whatever is there (and, with ``clean``, remove
    everything git does not track): every file of the tree is looked at.

    With ``clean``, the tree is cleaned before the checkout too: a tracked folder a
    command replaced by a link (to the folder, moved) is untracked there, but ``git
    checkout --force`` reads the files below it through the link (``lstat`` follows
    a link on the way), finds them unchanged and keeps them; a clean after it would
    then remove the link and the tracked files with it.
    """
    if clean:
        _git(path, admin, "clean", "-ffdxq", what="cleaning a worktree")
    _git(path, admin, "checkout", "-q", "--force", "--detach", sha, what=f"checking out {sha[:12]}")
    if clean:
        _git(path, admin, "clean", "-ffdxq", what="cleaning a worktree")
        remove_special(path, None)


def remove_special(path: Path, below: list[str] | None) -> None:
    """Unlink the fifos, sockets and device files ``git clean`` left in the worktree
    ``path``: at the entries ``below`` (relative paths) and directly in those that are
    folders; with None, anywhere (a walk of every folder; links are not followed)."""
    if below is None:
        folders = [os.fspath(path)]
        while folders:
            folders += _unlink_special_in(folders.pop())
        return
    for name in below:
        where = path / name
        mode = _lmode(where)
        if stat.S_ISDIR(mode):
            _unlink_special_in(os.fspath(where))
        elif mode and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            _unlink(os.fspath(where))


def _unlink_special_in(folder: str) -> list[str]:
    """Unlink the fifos, sockets and device files directly in ``folder``; its folders."""
    below: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                below.append(entry.path)
            elif _special(entry):
                _unlink(entry.path)
    return below


def _unlink(path: str) -> None:
    """Unlink ``path``, giving its folder write permission back if a command took it."""
    try:
        os.unlink(path)
    except PermissionError:
        os.chmod(os.path.dirname(path), 0o755)
        os.unlink(path)


def _special(entry: os.DirEntry[str]) -> bool:
    """True for an entry that is no file, folder or link (from the directory alone)."""
    return not (
        entry.is_file(follow_symlinks=False)
        or entry.is_dir(follow_symlinks=False)
        or entry.is_symlink()
    )


def known_reset(path: Path, admin: Path, sha: str, *, added: list[str] | None) -> list[str] | None:
    """Bring a worktree whose index equals its files (see the module docs) to ``sha``,
    touching only the paths where the index differs from it.

    ``sha`` is a full commit id. ``added``: the folders (and root entries)
    where something may have been added since the last reset (see
    :mod:`.folders`; None: anywhere): only they are cleaned. Returns the
    paths it checked out, or None, having changed nothing, when more than
    :data:`KNOWN_RESET_MAX_PATHS` paths differ (a full reset is cheaper
    then) or a tracked file no longer matches the index; raises
    :class:`GitError` when git fails and :class:`Broken` when the index does
    not end as the commit's tree.
    """
    # a tracked file written since the capture (a process the command left behind that
    # the survivor check could not see, its environment cleared): the files are no
    # longer what the index says, so only a full reset is sound (one lstat a file)
    stray = _git(path, admin, "diff-files", "--quiet", what="checking the files", check=False)
    if stray.returncode != 0:
        return None
    listed = _git(
        path,
        admin,
        "diff-index",
        "--cached",
        "-z",
        "--name-only",
        "--no-renames",
        sha,
        what=f"listing the paths that differ from {sha[:12]}",
    ).stdout
    paths = [p for p in listed.split(b"\0") if p]
    if len(paths) > KNOWN_RESET_MAX_PATHS:
        return None
    if paths:
        # a path below another listed one (a file that became a folder, or the
        # reverse) is covered by it; naming both makes git refuse the second
        _git(
            path,
            admin,
            "--literal-pathspecs",
            "checkout",
            "--quiet",
            "--no-overlay",
            sha,
            "--pathspec-from-file=-",
            "--pathspec-file-nul",
            input=b"\0".join(outermost(paths)) + b"\0",
            what=f"checking out the changed paths of {sha[:12]}",
        )
    write_file(admin / "HEAD", f"{sha}\n")
    if added is None or len(added) > KNOWN_RESET_MAX_PATHS:
        _git(path, admin, "clean", "-ffdxq", what="cleaning a worktree")
        remove_special(path, None)
    elif added or paths:
        if added:
            _git(
                path,
                admin,
                "--literal-pathspecs",
                "clean",
                "-ffdxq",
                "--",
                *added,
                what="cleaning the changed folders of a worktree",
            )
            remove_special(path, added)
        touched = [p.decode("utf-8", "surrogateescape") for p in paths]
        _remove_empty_folders(path, admin, added + touched, keep=set(touched))
    differs = _git(
        path, admin, "diff-index", "--cached", "--quiet", sha, what="checking", check=False
    )
    if differs.returncode != 0:
        raise Broken(f"the index is not {sha[:12]}'s tree after resetting the changed paths")
    return [p.decode("utf-8", "surrogateescape") for p in paths]


def _remove_empty_folders(path: Path, admin: Path, below: list[str], *, keep: set[str]) -> None:
    """Remove the folders of ``path`` left empty above (and at) the paths in ``below``,
    deepest first, as ``git clean -d`` would: a checkout or a clean there may have
    emptied them. A folder at a path in ``keep``, or that the index holds (an
    uninitialised submodule's empty folder), stays."""
    folders: set[str] = set()
    for p in below:
        parts = p.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    for folder in sorted(folders - keep, key=lambda f: f.count("/"), reverse=True):
        target = path / folder
        if not stat.S_ISDIR(_lmode(target)) or not _empty(target):
            continue  # not empty: something tracked is in it
        if _git(
            path,
            admin,
            "--literal-pathspecs",
            "ls-files",
            "-z",
            "--",
            folder,
            what="listing a folder",
        ).stdout:
            continue  # a gitlink: its folder is part of the checkout
        with contextlib.suppress(OSError):
            os.rmdir(target)


def _empty(folder: Path) -> bool:
    """True when ``folder`` holds no entry (False when it cannot be read)."""
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _lmode(path: Path) -> int:
    """``path``'s mode, not following a link (0 when it is not there)."""
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def outermost(paths: list[bytes]) -> list[bytes]:
    """``paths`` without those below another of them (``a/b`` goes when ``a`` is there)."""
    listed = set(paths)
    kept = []
    for p in paths:
        parts = p.split(b"/")
        if not any(b"/".join(parts[:i]) in listed for i in range(1, len(parts))):
            kept.append(p)
    return kept
