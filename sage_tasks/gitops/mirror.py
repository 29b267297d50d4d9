"""A ticket worker's cached bare mirror of a run's repository, and its throw-away worktrees.

Layout under the worker's ``workdir``::

    mirrors/<key>          bare mirror of one URL (key: sha256(url)[:16])
    mirrors/<key>.lock     flock: exclusive to fetch or prune, shared to add a worktree
    worktrees/<key>-<pid>-<random>        a ticket's detached worktree
    worktrees/<key>-<pid>-<random>.lock   flock held by the process using it

Several worker processes on one host share a mirror. A worktree's lock is
taken before the worktree exists and dropped after it is gone, and the kernel
drops it when its process dies; so ``prune`` tells a crashed worker's
leftovers (lockable) from a live one's (locked) without trusting pids.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sage_tasks.errors import GitError, RepositoryError
from sage_tasks.gitops.process import first_line, redact_url, run_git

#: a lock file without its worktree is left alone this long (its owner may be starting)
_YOUNG_LOCK_SECONDS = 60.0
_SHA_RE = re.compile(r"^[0-9a-f]{4,64}$")


class Mirror:
    """One cached bare mirror of ``repo_url`` under ``workdir`` (see the module docs)."""

    def __init__(self, workdir: Path, repo_url: str, *, fetch_timeout: float = 600.0) -> None:
        self.workdir = workdir
        self.url = _absolute(repo_url)
        #: a fetch that takes longer (a dead network) fails instead of hanging the ticket
        self.fetch_timeout = fetch_timeout
        self.key = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.path = workdir / "mirrors" / self.key
        self.worktrees = workdir / "worktrees"
        self._lock_file = workdir / "mirrors" / f"{self.key}.lock"

    @contextlib.contextmanager
    def _locked(self, *, shared: bool = False) -> Iterator[None]:
        self._lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_file, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _init(self) -> None:
        """Create the bare mirror if missing (caller holds the exclusive lock)."""
        if (self.path / "HEAD").exists():
            return
        tmp = self.path.with_name(f"{self.key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        run_git(self.workdir, "init", "--quiet", "--bare", str(tmp), what="creating a mirror")
        for key, value in (("core.autocrlf", "false"), ("core.logAllRefUpdates", "false")):
            run_git(tmp, "config", key, value)
        shutil.rmtree(self.path, ignore_errors=True)
        os.rename(tmp, self.path)

    def fetch(self, branch: str) -> str:
        """Fetch ``refs/heads/<branch>`` from the URL into the mirror; return its head commit."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        check = run_git(self.workdir, "check-ref-format", f"refs/heads/{branch}", check=False)
        if check.returncode != 0 or branch.startswith("-"):
            raise RepositoryError(f"{branch!r} is not a valid branch name", path=branch)
        ref = f"refs/heads/{branch}"
        with self._locked():
            self._init()
            try:
                proc = run_git(
                    self.path,
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    self.url,
                    f"+{ref}:{ref}",
                    check=False,
                    timeout=self.fetch_timeout,
                )
            except GitError as exc:
                where = redact_url(self.url)
                raise RepositoryError(
                    f"cannot fetch {branch!r} from {where}: {exc}", path=branch
                ) from None
            if proc.returncode != 0:
                where = redact_url(self.url)
                raise RepositoryError(
                    f"cannot fetch {branch!r} from {where}: {first_line(proc.stderr)}", path=branch
                )
            sha = run_git(self.path, "rev-parse", "--verify", f"{ref}^{{commit}}").stdout
        return sha.decode().strip()

    @contextlib.contextmanager
    def worktree(self, sha: str) -> Iterator[Path]:
        """A fresh detached worktree at commit ``sha``, removed on exit whatever happens."""
        if not _SHA_RE.match(sha):
            raise RepositoryError(f"{sha!r} is not a commit id", path=sha)
        self.worktrees.mkdir(parents=True, exist_ok=True)
        name = f"{self.key}-{os.getpid()}-{secrets.token_hex(6)}"
        path = self.worktrees / name
        lock = self.worktrees / f"{name}.lock"
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with self._locked(shared=True):
                    run_git(
                        self.path,
                        "worktree",
                        "add",
                        "--quiet",
                        "--detach",
                        str(path),
                        sha,
                        what=f"creating a worktree at {sha[:12]}",
                    )
                yield path
            finally:
                self._remove(path)
        finally:
            lock.unlink(missing_ok=True)
            os.close(fd)

    def _remove(self, path: Path) -> None:
        proc = run_git(
            self.path, "worktree", "remove", "--force", "--force", str(path), check=False
        )
        if proc.returncode != 0 or path.exists():
            _rmtree(path)
            run_git(self.path, "worktree", "prune", check=False)

    def prune(self) -> int:
        """Remove worktrees of this mirror left by crashed workers; return how many."""
        with self._locked():
            return _prune_key(self.workdir, self.key)


def _absolute(url: str) -> str:
    """A local path made absolute (git runs in the mirror); URLs and ``host:path`` as they are."""
    if "://" in url or re.match(r"^[^/]+:", url):
        return url
    return str(Path(url).absolute())


def prune_workdir(workdir: Path) -> int:
    """Remove every crashed worker's leftovers in ``workdir`` (all mirrors); return how many.

    Called when a ticket worker starts: it does not know the URLs yet.
    """
    mirrors = workdir / "mirrors"
    keys: set[str] = set()
    for base in (mirrors, workdir / "worktrees"):
        if base.is_dir():
            keys.update(e.name[:16] for e in base.iterdir() if re.match(r"^[0-9a-f]{16}", e.name))
    removed = 0
    for key in sorted(keys):
        lock_file = mirrors / f"{key}.lock"
        mirrors.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            removed += _prune_key(workdir, key)
        finally:
            os.close(fd)
    return removed


def _prune_key(workdir: Path, key: str) -> int:
    """Prune one mirror's stale worktrees (caller holds the mirror's exclusive lock)."""
    mirror = workdir / "mirrors" / key
    for tmp in mirror.parent.glob(f"{key}.tmp-*"):
        _rmtree(tmp)
    removed = 0
    trees = workdir / "worktrees"
    if trees.is_dir():
        for entry in sorted(trees.iterdir()):
            if not entry.name.startswith(key + "-"):
                continue
            if entry.suffix == ".lock":
                if not entry.with_suffix("").exists():
                    _drop_stale_lock(entry, lambda: None, young_ok=True)
                continue
            lock = entry.with_name(entry.name + ".lock")
            if not lock.exists():
                _rmtree(entry)
                removed += 1
            elif _drop_stale_lock(lock, functools.partial(_rmtree, entry), young_ok=False):
                removed += 1
    if (mirror / "HEAD").exists():
        run_git(mirror, "worktree", "prune", check=False)
    return removed


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


def _rmtree(path: Path) -> None:
    """Delete a tree even where an executor took write permission away."""

    def retry(func: Callable[..., object], name: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), stat.S_IRWXU)
            os.chmod(name, stat.S_IRWXU)
        with contextlib.suppress(FileNotFoundError):
            func(name)

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=retry)
