"""A ticket worker's cached bare mirror of a run's repository, and its worktrees.

Layout under the worker's ``workdir``::

    mirrors/<key>          bare mirror of one URL (key: sha256(url)[:16])
    mirrors/<key>.lock     flock: exclusive to fetch, prune, add or remove a worktree;
                           shared to move one (see below)
    worktrees/<name>       a worktree while a ticket runs in it (name: <key>-<pid>-<random>)
    idle/<name>            the same worktree between two tickets of its process
    idle/<name>.lock       flock held by the process owning the worktree, as long as it exists
    repos/<name>           the worktree's own bare repository (see :mod:`.slotrepo`): it
                           borrows the mirror's objects and keeps what git commands in the
                           worktree write (refs, stashes, config, hooks, objects)

A mirror of a local path borrows the repository's objects (git's
alternates, as ``git clone --shared`` does): every commit the commit worker
makes is there at once, with nothing to copy, and :meth:`Mirror.resolve`
reads the branch head from the repository itself, with no fetch. A URL's
mirror fetches only when the head the run's record names is not the one its
last fetch brought (the first ticket of a batch on a host, not its siblings).

A worker process keeps one detached worktree per mirror and reuses it: each
ticket starts with a reset of it to the ticket's head (see :mod:`.worktree`:
after a ticket whose patch was captured (:meth:`Mirror.captured`), only the
paths that differ from the head are checked out and only the folders that
got new entries (see :mod:`.folders`) cleaned; otherwise ``git checkout
--force --detach <head>`` and ``git clean -ffdx``), and the command sees a
clean checkout of the head: nothing left over (untracked, ignored, modified,
staged, deleted or re-moded files, empty folders). Before that, everything a
command could have changed outside its files is checked or put back, and a
worktree that looks wrong in any way (its ``.git`` file or git directory
altered, an index with flags such as skip-worktree, a reset that fails) is
thrown away and made afresh.

With ``adopt`` (``SAGE_KEEP_WORKTREES``), a process that has no worktree of
its own takes over one another process put aside in ``idle/`` and no longer
holds (it stopped), before making a new one: the next worker of a host, or
the next ``--local`` run, does not write a big tree's files again.

Several worker processes on one host share a mirror, and nothing of one
ticket's git commands reaches another: each worktree is linked to a
repository of its own (``repos/<name>``, see :mod:`.slotrepo`), not to the
mirror, and that repository is emptied before each reset. Fetching, pruning
and removing take the mirror's exclusive lock; moving a worktree between
``worktrees/`` and ``idle/`` takes it shared. A worktree's lock is taken
before the worktree exists and dropped after it is gone, and the kernel drops
it when its process dies; so ``prune`` tells a crashed worker's leftovers
(lockable) from a live one's (locked) without trusting pids.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sage_tasks.core.urls import redact_url
from sage_tasks.errors import GitError, RepositoryError
from sage_tasks.gitops.branch import check_branch_name
from sage_tasks.gitops.folders import Folders, changed, survey
from sage_tasks.gitops.leftovers import keep_pristine, prune_key, try_lock
from sage_tasks.gitops.process import Helper, first_line, run_git
from sage_tasks.gitops.removal import remove_tree
from sage_tasks.gitops.slotrepo import drop_stale_objects, make_repository, tidy_repository
from sage_tasks.gitops.worktree import (
    Broken,
    IndexStamp,
    admin_of,
    empty_gitlinks,
    full_reset,
    index_gitlinks,
    index_stamp,
    known_reset,
    tidy_admin,
    write_file,
)

#: object formats git knows
_FORMATS = ("sha1", "sha256")
_SHA_RE = re.compile(r"^[0-9a-f]{4,64}$")
_FULL_SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
#: git runs ``maintenance run --auto`` (gc) after one fetch in this many; it is a process
_MAINTENANCE_EVERY = 64
_fetches = itertools.count()
#: a run of heads resolved without a fetch still fetches now and then (git's upkeep runs then)
_resolves = itertools.count(1)
#: (repository path, inode) -> a ``git cat-file --batch-check`` reading refs and objects there
_readers: dict[tuple[str, int], Helper] = {}

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    """A worktree kept by this process: its name, lock and git directory."""

    name: str
    lock_fd: int
    pid: int
    busy: bool = True
    #: ``$GIT_DIR/worktrees/<id>`` as git made it (read before any command ran)
    admin: Path | None = None
    #: the index a patch capture left, when it saw every file (see :meth:`Mirror.captured`)
    captured: IndexStamp | None = None
    #: its folders right after its last reset (see :mod:`.folders`)
    folders: Folders | None = None
    #: its index right after its last reset: a command that wrote it (``git rm
    #: --cached``, ``git reset <older>``) may have made a file untracked in place
    reset_index: IndexStamp | None = None


#: (workdir, mirror key) -> the worktrees this process keeps for that mirror
_slots: dict[tuple[str, str], list[_Slot]] = {}
_slots_guard = threading.Lock()


def _forget_slots_after_fork() -> None:
    """A forked child owns none of its parent's worktrees (the parent holds their locks)."""
    global _slots_guard
    for slots in _slots.values():
        for slot in slots:
            with contextlib.suppress(OSError):
                os.close(slot.lock_fd)
    _slots.clear()
    _slots_guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_slots_after_fork)


class Mirror:
    """One cached bare mirror of ``repo_url`` under ``workdir`` (see the module docs)."""

    def __init__(
        self, workdir: Path, repo_url: str, *, fetch_timeout: float = 600.0, adopt: bool = False
    ) -> None:
        self.workdir = workdir
        #: take over a kept worktree another process left (see the module docs) before
        #: making a new one
        self.adopt = adopt
        self.url = _absolute(repo_url)
        #: a fetch that takes longer (a dead network) fails instead of hanging the ticket
        self.fetch_timeout = fetch_timeout
        self.key = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.path = workdir / "mirrors" / self.key
        self.worktrees = workdir / "worktrees"
        self.idle = workdir / "idle"
        self.repos = workdir / "repos"
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

    def _init(self, ref: str) -> None:
        """Create the bare mirror if missing (caller holds the exclusive lock), in the
        repository's object format (SHA-1 or SHA-256: git fetches between the same only)."""
        if (self.path / "HEAD").exists():
            return
        tmp = self.path.with_name(f"{self.key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        borrowed, fmt = self._source() or (None, self._remote_format(ref))
        run_git(
            self.workdir,
            "init",
            "--quiet",
            "--bare",
            f"--object-format={fmt}",
            str(tmp),
            what="creating a mirror",
        )
        for key, value in (("core.autocrlf", "false"), ("core.logAllRefUpdates", "false")):
            run_git(tmp, "config", key, value)
        if borrowed:
            write_file(tmp / "objects" / "info" / "alternates", f"{borrowed}\n")
        keep_pristine(tmp)
        shutil.rmtree(self.path, ignore_errors=True)
        os.rename(tmp, self.path)

    def fetch(self, branch: str) -> str:
        """Fetch ``refs/heads/<branch>`` from the URL into the mirror; return its head commit."""
        check_branch_name(branch)
        self.workdir.mkdir(parents=True, exist_ok=True)
        ref = f"refs/heads/{branch}"
        # git's automatic gc after a fetch is one more process: let it run now and then
        # (synchronously, under the lock, so it never races worktree bookkeeping)
        if next(_fetches) % _MAINTENANCE_EVERY:
            upkeep = ("-c", "maintenance.auto=false")
        else:
            upkeep = ("-c", "gc.autoDetach=false")
        with self._locked():
            self._init(ref)
            try:
                proc = run_git(
                    self.path,
                    *upkeep,
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    # a command that checked the branch out in its worktree must not
                    # stop every later fetch on this host
                    "--update-head-ok",
                    self.url,
                    # a mirror that borrows keeps no branch refs: a branch the repository
                    # deleted and pruned would leave a ref to objects gone for good
                    ref if self._borrows() else f"+{ref}:{ref}",
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
            return self._fetched(ref)

    def resolve(self, branch: str, hint: str = "") -> str:
        """The commit a ticket starts on: the branch head, fetched only when it must be.

        A mirror that borrows a local repository's objects reads the head
        from that repository (through a ``git cat-file`` kept open): exact,
        and no fetch. A URL's mirror takes ``hint`` (the head the run's record
        names; the commit worker writes it after each commit) when it is the
        head its last fetch of the branch brought (a fetch moves the ref only
        once every object arrived), and fetches otherwise. Now and then it
        fetches anyway: git's upkeep of the mirror runs then.
        """
        check_branch_name(branch)
        if next(_resolves) % _MAINTENANCE_EVERY and (self.path / "HEAD").exists():
            ref = f"refs/heads/{branch}"
            if self._borrows():
                head = _commit_of(Path(self.url), ref)
                if head is not None:
                    return head
            elif _FULL_SHA_RE.match(hint) and _commit_of(self.path, ref) == hint:
                return hint
        return self.fetch(branch)

    def _borrows(self) -> bool:
        """True when this mirror reads a local repository's objects (git's alternates)."""
        return (self.path / "objects" / "info" / "alternates").exists()

    def _source(self) -> tuple[str, str] | None:
        """The object directory and object format of the local repository this mirrors;
        None for a URL."""
        if _is_url(self.url) or not os.path.isdir(self.url):
            return None
        proc = run_git(
            Path(self.url),
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            "objects",
            "--show-object-format",
            check=False,
        )
        lines = proc.stdout.decode("utf-8", "surrogateescape").splitlines()
        if proc.returncode != 0 or len(lines) != 2 or not os.path.isdir(lines[0]):
            return None
        if lines[1] not in _FORMATS:
            return None
        return lines[0], lines[1]

    def _remote_format(self, ref: str) -> str:
        """The object format of the URL's repository, told by the length of the id it
        gives for ``ref`` (SHA-1 when it gives none: the fetch then says what is wrong)."""
        try:
            proc = run_git(
                self.workdir, "ls-remote", self.url, ref, check=False, timeout=self.fetch_timeout
            )
        except GitError:
            return "sha1"
        first = proc.stdout.split(b"\t", 1)[0].strip()
        return "sha256" if proc.returncode == 0 and len(first) == 64 else "sha1"

    def _fetched(self, ref: str) -> str:
        """The commit just fetched for ``ref``: FETCH_HEAD's first line, else ``rev-parse``."""
        try:
            with open(self.path / "FETCH_HEAD", "rb") as f:
                line = f.readline(4096).decode("ascii", "replace")
        except OSError:
            line = ""
        sha = line.split("\t", 1)[0]
        if _FULL_SHA_RE.match(sha):
            return sha
        out = run_git(self.path, "rev-parse", "--verify", f"{ref}^{{commit}}").stdout
        return out.decode().strip()

    @contextlib.contextmanager
    def worktree(self, sha: str, branch: str = "") -> Iterator[Path]:
        """A clean detached worktree at commit ``sha``, this process's alone until exit;
        with ``branch``, its repository has that branch, at ``sha`` (its only ref; ``sha``
        is then a full commit id, as a ref file holds).

        The worktree is kept for the next call of this process (reset then);
        whatever happens inside, nothing of it is visible there.
        """
        if not _SHA_RE.match(sha) or (branch and not _FULL_SHA_RE.match(sha)):
            raise RepositoryError(f"{sha!r} is not a commit id", path=sha)
        if branch:
            check_branch_name(branch)
        slot = self._ready(sha, branch)
        try:
            yield self.worktrees / slot.name
        finally:
            self._park(slot, sha)

    def git_dir(self, worktree: Path) -> Path | None:
        """The git directory of ``worktree`` (one of ours, in use), as git made it."""
        with _slots_guard:
            for slot in _slots.get(self._slot_key, []):
                if slot.busy and self.worktrees / slot.name == worktree:
                    return slot.admin
        return None

    def captured(self, worktree: Path) -> None:
        """Note that a patch capture just staged everything in ``worktree`` (one of ours,
        in use) and that nothing of the ticket's command is left running.

        The index then equals the files (ignored ones aside): unless something
        writes that index meanwhile, the next ticket's reset checks out only
        the paths where it differs from the next head (see :mod:`.worktree`).
        """
        with _slots_guard:
            for slot in _slots.get(self._slot_key, []):
                if slot.busy and slot.admin is not None and self.worktrees / slot.name == worktree:
                    slot.captured = index_stamp(slot.admin)
                    return

    def may_hold_untracked(self, worktree: Path) -> bool:
        """False when no folder of ``worktree`` (one of ours, in use) got a new entry since
        its reset: then it holds no untracked file (see :mod:`.folders`)."""
        with _slots_guard:
            for slot in _slots.get(self._slot_key, []):
                if slot.busy and self.worktrees / slot.name == worktree:
                    if slot.admin is None or slot.reset_index is None:
                        return True
                    if index_stamp(slot.admin) != slot.reset_index:
                        return True
                    return changed(worktree, slot.folders) != []
        return True

    def close(self) -> None:
        """Remove the worktrees this process keeps for this mirror (those not in use)."""
        with _slots_guard:
            idle = [s for s in _slots.get(self._slot_key, []) if not s.busy]
            for slot in idle:
                slot.busy = True
        for slot in idle:
            self._discard(slot)

    def prune(self) -> int:
        """Remove worktrees of this mirror left by crashed workers; return how many."""
        with self._locked():
            return prune_key(self.workdir, self.key)

    # -- the kept worktree ----------------------------------------------------------------

    @property
    def _slot_key(self) -> tuple[str, str]:
        return (str(self.workdir), self.key)

    def _ready(self, sha: str, branch: str) -> _Slot:
        """This process's kept worktree reset to ``sha``, or an adopted one, or a new one."""
        slot = None
        with _slots_guard:
            for candidate in _slots.get(self._slot_key, []):
                if not candidate.busy and candidate.pid == os.getpid():
                    candidate.busy = True
                    slot = candidate
                    break
        if slot is None and self.adopt:
            slot = self._adopt()
        if slot is not None:
            try:
                self._reuse(slot, sha, branch)
                return slot
            except (OSError, GitError, Broken):
                self._discard(slot)
            except BaseException:
                self._discard(slot)
                raise
        return self._create(sha, branch)

    def _adopt(self) -> _Slot | None:
        """An idle worktree of this mirror that no live process holds, now this one's.

        Its lock decides who takes it (a live owner holds it; two processes
        adopting at once cannot both get it). Its ``.git`` file must name a
        git directory of this mirror that names it back, as :meth:`_park`
        left them, or it is removed; whatever the last command did in it,
        :meth:`_reuse` resets it in full (an adopted worktree has no capture
        of this process).
        """
        try:
            names = sorted(e.name for e in os.scandir(self.idle) if e.is_dir(follow_symlinks=False))
        except OSError:
            return None
        for name in names:
            fd = try_lock(self.idle / f"{name}.lock") if name.startswith(f"{self.key}-") else None
            if fd is None:
                continue
            slot = _Slot(name=name, lock_fd=fd, pid=os.getpid())
            with _slots_guard:
                _slots.setdefault(self._slot_key, []).append(slot)
            if self._owns(name):
                slot.admin = admin_of(self.idle / name)
                os.utime(fd)  # used now: a trim of the unused ones keeps it
                return slot
            self._discard(slot)  # its git directory is not known: prune tidies git's side
        return None

    def _owns(self, name: str) -> bool:
        """True when the idle worktree ``name`` and its git directory name each other."""
        path = self.idle / name
        try:
            admin = admin_of(path)
            back = (admin / "gitdir").read_bytes()
        except (OSError, Broken):
            return False
        return admin == self._admin_of(name) and back == f"{path.resolve()}/.git\n".encode()

    def _create(self, sha: str, branch: str) -> _Slot:
        self.worktrees.mkdir(parents=True, exist_ok=True)
        self.idle.mkdir(parents=True, exist_ok=True)
        name = f"{self.key}-{os.getpid()}-{secrets.token_hex(6)}"
        fd = os.open(self.idle / f"{name}.lock", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        slot = _Slot(name=name, lock_fd=fd, pid=os.getpid())
        with _slots_guard:
            _slots.setdefault(self._slot_key, []).append(slot)
        path, repo = self.worktrees / name, self.repos / name
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            make_repository(repo, self.path, branch, sha)
            run_git(
                repo,
                "worktree",
                "add",
                "--quiet",
                "--no-checkout",
                "--detach",
                str(path),
                sha,
                what=f"creating a worktree at {sha[:12]}",
            )
            slot.admin = admin_of(path)
            if slot.admin != self._admin_of(name):
                raise Broken(f"git made the worktree's directory at {slot.admin}")
            full_reset(path, slot.admin, sha, clean=False)
            slot.folders = survey(path, slot.admin, sha)
            slot.reset_index = index_stamp(slot.admin)
        except BaseException:
            self._discard(slot)
            raise
        return slot

    def _reuse(self, slot: _Slot, sha: str, branch: str) -> None:
        """Bring the kept worktree back and reset it to ``sha``; raise if it looks wrong."""
        captured, slot.captured = slot.captured, None
        if slot.admin is None:
            raise Broken("no git directory")
        path = self.worktrees / slot.name
        # under the lock: a prune always finds it in one of the two places
        with self._locked(shared=True):
            os.rename(self.idle / slot.name, path)
            write_file(slot.admin / "gitdir", f"{path.resolve()}/.git\n")
            if admin_of(path) != slot.admin:
                raise Broken(".git file changed")
        tidy_repository(self.repos / slot.name, self.path, slot.name, branch, sha)
        tidy_admin(slot.admin)
        gitlinks = index_gitlinks(slot.admin / "index", _oid_size(sha))
        if gitlinks is None:
            raise Broken("index flags")
        self._reset(slot, sha, captured=captured, gitlinks=gitlinks)
        drop_stale_objects(self.repos / slot.name, self.path)

    def _reset(
        self, slot: _Slot, sha: str, *, captured: IndexStamp | None, gitlinks: list[str]
    ) -> None:
        """Reset the worktree to ``sha``: only the paths that differ when the last
        ticket's capture left the index (``captured``) untouched, else in full; empty
        the submodules' folders (``gitlinks``: the index's before the reset); then
        note its folders for the next look (see :mod:`.folders`)."""
        admin, folders, slot.folders = slot.admin, slot.folders, None
        slot.reset_index = None
        assert admin is not None
        path = self.worktrees / slot.name
        if captured is not None and _FULL_SHA_RE.match(sha) and index_stamp(admin) == captured:
            try:
                added = changed(path, folders)
                touched = known_reset(path, admin, sha, added=added)
                if touched is not None:
                    # a gitlink the reset touched may be a folder of the head now
                    empty_gitlinks(path, [g for g in gitlinks if not _below(touched, g)])
                    slot.folders = survey(
                        path, admin, sha, before=folders, touched=touched, added=added
                    )
                    slot.reset_index = index_stamp(admin)
                    return
            except (GitError, Broken) as exc:
                log.warning("worktree %s: %s; checking it out in full", slot.name, exc)
        full_reset(path, admin, sha, clean=True)
        empty_gitlinks(path, index_gitlinks(admin / "index", _oid_size(sha)) or [])
        slot.folders = survey(path, admin, sha)
        slot.reset_index = index_stamp(admin)

    def _admin_of(self, name: str) -> Path:
        """The git directory of the worktree ``name`` (in its own repository), as git names it."""
        return (self.repos / name).resolve() / "worktrees" / name

    def _park(self, slot: _Slot, sha: str) -> None:
        """Put the worktree aside until this process's next ticket (or remove it)."""
        idle = self.idle / slot.name
        try:
            if slot.admin is None:
                raise Broken("no git directory")
            with self._locked(shared=True):
                os.rename(self.worktrees / slot.name, idle)
                write_file(slot.admin / "gitdir", f"{idle.resolve()}/.git\n")
                if _FULL_SHA_RE.match(sha):
                    # detached again, whatever the command checked out: no branch stays in use
                    write_file(slot.admin / "HEAD", f"{sha}\n")
        except (OSError, Broken):
            self._discard(slot)
            return
        with _slots_guard:
            slot.busy = False

    def _discard(self, slot: _Slot) -> None:
        """Remove a worktree of ours, its git directory and its lock (never raises)."""
        try:
            for path in (self.worktrees / slot.name, self.idle / slot.name):
                _rmtree(path)
            _rmtree(self.repos / slot.name)
            if slot.admin is None or slot.admin != self._admin_of(slot.name):
                # one linked to the mirror itself (made by an earlier version)
                with self._locked():
                    run_git(self.path, "worktree", "prune", check=False)
        except (OSError, GitError):
            pass
        finally:
            with _slots_guard:
                slots = _slots.get(self._slot_key, [])
                if slot in slots:
                    slots.remove(slot)
            (self.idle / f"{slot.name}.lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                os.close(slot.lock_fd)


def _oid_size(sha: str) -> int:
    """The bytes of an object id in the repository ``sha`` (a full commit id) is from."""
    return 32 if len(sha) == 64 else 20


def _below(paths: list[str], top: str) -> bool:
    """True when one of ``paths`` is ``top`` or lies below it."""
    return any(p == top or p.startswith(f"{top}/") for p in paths)


def _commit_of(repo: Path, name: str) -> str | None:
    """The commit ``name`` names in ``repo``, or None (asked of a ``git cat-file`` kept open).

    One reader per repository directory as it is now (a directory made anew
    gets a new one); :class:`Helper` restarts it after it dies or a fork.
    """
    try:
        where = (str(repo), os.stat(repo).st_ino)
    except OSError:
        return None
    reader = _readers.get(where)
    if reader is None:
        reader = _readers[where] = Helper(repo, "cat-file", "--batch-check")
    try:
        reader.send(name.encode("utf-8", "surrogateescape") + b"\n")
        parts = reader.stdout.readline().split()
    except (GitError, OSError):
        return None
    if len(parts) != 3 or parts[1] != b"commit":
        return None  # missing, or not a commit (an empty answer: the reader died)
    sha = parts[0].decode("ascii", "replace")
    return sha if _FULL_SHA_RE.match(sha) else None


def _is_url(url: str) -> bool:
    """True for a URL or scp-style ``host:path``, False for a local path."""
    return "://" in url or re.match(r"^[^/]+:", url) is not None


def _absolute(url: str) -> str:
    """A local path made absolute (git runs in the mirror); URLs and ``host:path`` as they are."""
    if _is_url(url):
        return url
    return str(Path(url).absolute())


def _rmtree(path: Path) -> None:
    """Delete a tree even where an executor took write permission away (several threads)."""
    remove_tree(path)
