"""Which folders of a kept worktree a command added entries to, told from their timestamps.

Right after a reset (see :mod:`.worktree`) a worktree holds only what git
tracks: no untracked or ignored file, no empty folder. Anything a command
adds later (a file, a folder, a link, a nested repository) is a new entry in
some folder, and POSIX has the kernel update that folder's modification and
change times when an entry is created, removed or renamed; the change time
cannot be set back by a program. So :func:`survey` notes, right after the
reset, every folder git tracks (``git ls-tree -d``) with its inode and
times, and the names at the root; :func:`changed` later names the folders
whose inode or times moved and the root's new names. Where nothing moved,
nothing was added: the patch capture need not look for untracked files and
the next reset need not clean (a file changed in place is found all the same:
git compares every tracked file's metadata).

Time stamps come from a clock that ticks every few milliseconds, so a
folder written in the same tick as the survey could change again without
its times moving. The survey sets the worktree's ``.git`` file's times to
now and reads them back (the file system's own "now", at its own
granularity); a folder not older than that is noted as unknown, after a
short wait for the clock to move on, and counts as changed.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from sage_tasks.gitops.process import run_git

#: a folder whose times are not older than the survey counts as changed (no stamp)
Stamp = tuple[int, int, int] | None
#: how often the survey waits for the file system's clock to tick past fresh folders
_SETTLE_TRIES = 3
_SETTLE_WAIT_S = 0.002


@dataclass(frozen=True)
class Folders:
    """The folders of a worktree as a survey found them (paths relative to its root)."""

    stamps: dict[str, Stamp]
    #: the root's entries: name, inode and whether it is a folder (a file replaced by a
    #: folder of the same name moves no tracked folder's times)
    root_names: frozenset[tuple[str, int, bool]]


def survey(
    path: Path,
    admin: Path,
    sha: str,
    *,
    before: Folders | None = None,
    touched: list[str] | None = None,
    added: list[str] | None = None,
) -> Folders | None:
    """Note the folders of the worktree ``path`` (git directory ``admin``), a clean
    checkout of commit ``sha``; None when they cannot be told apart from later changes.

    Without ``before`` git lists them. With it (the survey before the reset
    that just ran, and what that reset knew: the paths it ``touched`` and the
    folders where something was ``added`` since that survey), they are found
    without git: every folder now there was there before, or holds a path the
    reset wrote, or was added, inside an added folder, by the command.
    """
    try:
        if before is None or touched is None or added is None:
            names = set(_listed(path, admin, sha))
        else:
            names = _now_there(path, before, touched, added)
        root_names = _root_entries(path)
        root = os.fspath(path)
        stamps = {name: _stamp(f"{root}/{name}") for name in names}
        stamps = {name: s for name, s in stamps.items() if s is not None}
        # read after the folders: a folder older than this "now" shows any later change
        now = _now(path)
        fresh = [n for n, s in stamps.items() if _newest(s) >= now]
        for _ in range(_SETTLE_TRIES):
            if not fresh:
                break
            time.sleep(_SETTLE_WAIT_S)
            now = _now(path)
            fresh = [n for n in fresh if _newest(stamps[n]) >= now]
        for name in fresh:
            stamps[name] = None
    except OSError:
        return None
    return Folders(stamps=stamps, root_names=root_names)


def _listed(path: Path, admin: Path, sha: str) -> list[str]:
    """The folders git tracks at ``sha`` (``git ls-tree -d``)."""
    listed = run_git(
        path,
        "--git-dir",
        str(admin),
        "ls-tree",
        "-r",
        "-d",
        "-z",
        "--name-only",
        sha,
        what=f"listing the folders of {sha[:12]}",
    ).stdout
    return [n.decode("utf-8", "surrogateescape") for n in listed.split(b"\0") if n]


def _now_there(path: Path, before: Folders, touched: list[str], added: list[str]) -> set[str]:
    """Every folder that may be in the worktree now (some may be gone: not looked at)."""
    names = set(before.stamps)
    for p in touched:
        parts = p.split("/")
        names.update("/".join(parts[:i]) for i in range(1, len(parts)))
    todo = list(added)
    while todo:  # what the command added and the clean kept: folders git now tracks
        folder = todo.pop()
        if _stamp(os.fspath(path / folder)) is None:
            continue  # gone, or no folder (never followed through a link)
        names.add(folder)
        try:
            with os.scandir(path / folder) as entries:
                subs = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        todo.extend(f"{folder}/{s}" for s in subs if f"{folder}/{s}" not in names)
    return names


def changed(path: Path, folders: Folders | None) -> list[str] | None:
    """The folders (and the root's entries) that may hold entries added since the
    survey, relative to the root: [] when none; None when it cannot be told."""
    if folders is None:
        return None
    try:
        root_names = _root_entries(path)
    except OSError:
        return None
    found = sorted(e[0] for e in root_names - folders.root_names)
    root = os.fspath(path)
    for name, was in folders.stamps.items():
        if was is None or _stamp(f"{root}/{name}") != was:
            found.append(name)
    return found


def _root_entries(path: Path) -> frozenset[tuple[str, int, bool]]:
    """The entries at ``path``: name, inode, folder or not (from the directory alone)."""
    with os.scandir(path) as entries:
        return frozenset((e.name, e.inode(), e.is_dir(follow_symlinks=False)) for e in entries)


def _stamp(folder: str) -> Stamp:
    """A folder's inode, modification and change times (ns); None when it is no folder."""
    try:
        st = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _newest(stamp: Stamp) -> int:
    """The later of a stamp's two times (-1 for no stamp: nothing to wait for)."""
    return -1 if stamp is None else max(stamp[1], stamp[2])


def _now(path: Path) -> int:
    """The file system's time now (ns), as it stamps the worktree's ``.git`` file."""
    dot_git = path / ".git"
    os.utime(dot_git, follow_symlinks=False)
    st = os.lstat(dot_git)
    return max(st.st_mtime_ns, st.st_ctime_ns)
