"""What ticket workers leave in their workdir: removed, or kept for a later process.

A worktree's lock (``idle/<name>.lock``, see :mod:`.mirror`) is held by the
process that owns the worktree for as long as it exists, and the kernel drops
it when that process dies: a lock nobody holds marks a leftover, whatever
pids say. A leftover in ``worktrees/`` died during a ticket and is removed; one
in ``idle/`` was put aside between two tickets and is removed too, unless
the caller keeps idle worktrees for adoption (``SAGE_KEEP_WORKTREES``).

A command can also change its mirror through the worktree (``git config``
writes the mirror's shared config; ``info/exclude`` and ``info/attributes``
are shared too), and that changes what git does in every later worktree of
the mirror. A copy of those files as the mirror was made is kept in it
(``sage-pristine``, which git ignores); a worker that keeps worktrees puts them back
when it starts, so what one run's commands did there never reaches the next
run's patches.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from sage_tasks.gitops.process import run_git
from sage_tasks.gitops.removal import remove_tree

#: a lock file without its worktree is left alone this long (its owner may be starting)
_YOUNG_LOCK_SECONDS = 60.0
#: a mirror's files that change what git does in all of its worktrees
_SETTINGS = ("config", "info", "objects/info/alternates")
#: where in a mirror the copy of its settings as made is kept
PRISTINE = "sage-pristine"


def keep_pristine(mirror: Path) -> None:
    """Copy ``mirror``'s settings (just made) aside, for :func:`restore_pristine`."""
    pristine = mirror / PRISTINE
    remove_tree(pristine)
    for name in _SETTINGS:
        source = mirror / name
        if source.is_dir():
            shutil.copytree(source, pristine / name, symlinks=True)
        elif source.is_file():
            (pristine / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, pristine / name)


def restore_pristine(mirror: Path) -> bool:
    """Put ``mirror``'s settings back as :func:`keep_pristine` saw them (a mirror made
    before such a copy was kept is left as it is); True if something was changed."""
    pristine = mirror / PRISTINE
    if not pristine.is_dir():
        return False
    changed = False
    for name in _SETTINGS:
        if _contents(mirror / name) == _contents(pristine / name):
            continue
        changed = True
        remove_tree(mirror / name)
        if (pristine / name).is_dir():
            shutil.copytree(pristine / name, mirror / name, symlinks=True)
        elif (pristine / name).is_file():
            shutil.copyfile(pristine / name, mirror / name)
    return changed


def _contents(path: Path) -> dict[str, bytes | None]:
    """Every file under ``path`` (or ``path`` itself) with its bytes; links and other
    kinds as None, so that they differ from any file."""
    if path.is_symlink():
        return {"": None}
    if not path.exists():
        return {}
    if path.is_file():
        return {"": path.read_bytes()}
    found: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(folder) / name
            rel = os.path.relpath(full, path)
            if full.is_symlink() or not (full.is_file() or full.is_dir()):
                found[rel] = None
            elif full.is_file():
                found[rel] = full.read_bytes()
    return found


def prune_workdir(workdir: Path, *, keep_idle: bool = False, used_since: float = 0.0) -> int:
    """Remove every crashed worker's leftovers in ``workdir`` (all mirrors); return how many.

    Called when a ticket worker starts: it does not know the URLs yet. With
    ``keep_idle``, a worktree a stopped process put aside between two tickets
    is kept for a later process to adopt (see :meth:`Mirror._adopt`) when it
    was last taken at or after ``used_since`` (a time); one left in use
    (its process died during a ticket) is removed all the same.
    """
    mirrors = workdir / "mirrors"
    keys: set[str] = set()
    for base in (mirrors, workdir / "worktrees", workdir / "idle", workdir / "repos"):
        if base.is_dir():
            keys.update(e.name[:16] for e in base.iterdir() if re.match(r"^[0-9a-f]{16}", e.name))
    removed = 0
    for key in sorted(keys):
        lock_file = mirrors / f"{key}.lock"
        mirrors.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            removed += prune_key(workdir, key, keep_idle=keep_idle, used_since=used_since)
        finally:
            os.close(fd)
    return removed


def prune_key(workdir: Path, key: str, *, keep_idle: bool = False, used_since: float = 0.0) -> int:
    """Prune one mirror's stale worktrees (caller holds the mirror's exclusive lock;
    ``keep_idle`` and ``used_since`` as for :func:`prune_workdir`)."""
    mirror = workdir / "mirrors" / key
    for tmp in mirror.parent.glob(f"{key}.tmp-*"):
        remove_tree(tmp)
    if keep_idle and (mirror / "HEAD").exists():
        restore_pristine(mirror)
    trees, idle, repos = workdir / "worktrees", workdir / "idle", workdir / "repos"
    names: set[str] = set()
    for base in (trees, idle, repos):
        if base.is_dir():
            names.update(
                e.name.removesuffix(".lock") for e in base.iterdir() if e.name.startswith(key + "-")
            )
    kept = used_since if keep_idle else None
    removed = sum(_prune_worktree(trees, idle, repos, name, kept) for name in sorted(names))
    if (mirror / "HEAD").exists():
        run_git(mirror, "worktree", "prune", check=False)
    return removed


def _prune_worktree(trees: Path, idle: Path, repos: Path, name: str, kept: float | None) -> bool:
    """Remove the worktree ``name`` (and its own repository) if no live process holds it;
    True if it was removed.

    ``kept`` (a time): one put aside between two tickets and taken since then
    is kept for adoption instead.
    """
    found = [d for d in (trees / name, idle / name) if d.exists() or d.is_symlink()]
    repo = repos / name  # its own repository: goes with it, never kept on its own
    dirs = found + ([repo] if repo.exists() or repo.is_symlink() else [])
    # the lock lives in idle/ (before: beside the worktree)
    lock = next((p for p in (idle / f"{name}.lock", trees / f"{name}.lock") if p.exists()), None)

    def remove() -> None:
        for d in dirs:
            remove_tree(d)

    if lock is None:
        remove()
        return bool(dirs)
    if kept is not None and found == [idle / name] and _used_since(lock, kept):
        return False
    if not dirs:
        _drop_stale_lock(lock, lambda: None, young_ok=True)
        return False
    return _drop_stale_lock(lock, remove, young_ok=False)


def _used_since(lock: Path, since: float) -> bool:
    """True when the worktree of ``lock`` was made or adopted at or after ``since``."""
    try:
        return os.stat(lock).st_mtime >= since
    except OSError:
        return False


def try_lock(lock: Path) -> int | None:
    """``lock`` opened and locked (exclusive) by this process, or None when another holds it
    or it is gone (removed, or replaced meanwhile by a file of the same name)."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held, now = os.fstat(fd), os.stat(lock)
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _drop_stale_lock(lock: Path, cleanup: Callable[[], None], *, young_ok: bool) -> bool:
    """If nobody holds ``lock``, run ``cleanup`` and delete it; True if it was stale."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if young_ok and time.time() - os.fstat(fd).st_mtime < _YOUNG_LOCK_SECONDS:
            return False
        cleanup()
        lock.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
