"""``sage-submit --local``: the embedded default, everything on this machine.

:func:`local_fleet` runs a private ``redis-server`` on the repository's own
data folder under ``SAGE_WORKDIR`` (see :mod:`sage_tasks.cli.local_redis`: one
per repository, kept on disk, so later commands read the run's history),
one ticket worker, one commit worker and, if asked, Flower; the command line
submits and follows the run on them; then every process it started is
stopped — also on Ctrl-C, on errors and when a worker dies. A run that did
not end is marked FAILED and its queued work dropped, so the next run on the
repository starts clean. One ``--local`` run at a time uses a repository's
folder: a second one waits for the first to end.

The ticket worker's mirror and worktrees stay in that folder (``work/``) from
one run to the next: the next run's worker takes over the worktrees the last
one used (each reset in full before its first ticket) instead of writing a
big repository's files again, and what no run used is removed at the end.

:func:`local_reader` starts the same Redis (no workers) for ``status`` and
``report``, only for as long as they read it.
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from sage_tasks.cli.local_redis import (
    Server,
    free_port,
    homes,
    local_home,
    local_runs,
    prepare_home,
    private_redis,
    remember_run,
    repo_of,
    run_lock,
    terminate,
)
from sage_tasks.config import Settings
from sage_tasks.errors import ConfigError, LocalError, SageError, UnknownRun
from sage_tasks.store.broker import connect
from sage_tasks.store.runstate import RunStatus, RunStore

__all__ = [
    "LocalError",
    "LocalFleet",
    "local_fleet",
    "local_hint",
    "local_reader",
    "terminate_as_interrupt",
]

#: the port ``--flower`` without a number takes when it is free (Flower's own default)
FLOWER_PORT = 5555
#: the user name of a ``--local`` Flower
FLOWER_USER = "sage"
#: how long Flower may take to answer before the run gives up on it
FLOWER_START_S = 60.0
#: the environment variable that marks every process a ``--local`` run starts
MARKER = "SAGE_LOCAL_FLEET"
#: how long idle workers get to stop after a FINISHED run before they are killed
IDLE_STOP_S = 0.25


@dataclass(frozen=True)
class FlowerAccess:
    """Where a ``--local`` Flower listens and its credentials (printed once)."""

    url: str
    user: str
    password: str


class LocalFleet:
    """The workers (and Flower) ``--local`` starts on a private Redis, and their folder."""

    def __init__(self, root: Path, home: Path, server: Server, human: Console):
        self.root = root
        self.home = home
        self.server = server
        self.human = human
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: the run ended FINISHED: nothing is in flight, so the workers need no grace
        self.finished = False
        #: the workers' node names are ``tickets-<node>@host`` and ``commit-<node>@host``
        self.node = f"local-{os.getpid()}"

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def workdir(self) -> Path:
        """The ticket worker's mirror and worktrees: kept from one run to the next."""
        return self.home / "work"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SAGE_BROKER_URL"] = self.url
        env.pop("SAGE_RESULT_BACKEND", None)
        env["SAGE_WORKDIR"] = str(self.workdir)
        env["SAGE_KEEP_WORKTREES"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        env[MARKER] = str(self.home)
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            cwd=self.root,
        )
        log.close()

    def start_workers(self, repo: Path, concurrency: int) -> None:
        env = self.env()
        base = _sage_worker()
        self._spawn(
            "tickets",
            [
                *base,
                "tickets",
                f"--concurrency={concurrency}",
                f"--hostname=tickets-{self.node}@%h",
                "--loglevel=WARNING",
            ],
            env,
        )
        self._spawn(
            "commit",
            [
                *base,
                "commit",
                "--repo",
                str(repo),
                f"--hostname=commit-{self.node}@%h",
                "--loglevel=WARNING",
            ],
            env,
        )

    def start_flower(self, port: int) -> FlowerAccess:
        """Flower on loopback ``port`` behind a generated password.

        Returns once Flower receives the ticket worker's events, so that it
        sees the whole run (it learns about tasks only from events).
        """
        password = secrets.token_hex(12)
        auth = f"{FLOWER_USER}:{password}"
        self._spawn(
            "flower",
            [*_sage_worker(), "flower", f"--port={port}", "--address=127.0.0.1"],
            {**self.env(), "FLOWER_BASIC_AUTH": auth},
        )
        node = f"tickets-{self.node}@".encode()
        deadline = time.monotonic() + FLOWER_START_S
        while time.monotonic() < deadline:
            if self.procs["flower"].poll() is not None:
                raise LocalError(f"Flower did not start: {self.log_tail('flower')}")
            status, body = _http_get(port, "/api/workers?status=1", auth)
            if status == 200 and node in body:
                return FlowerAccess(f"http://127.0.0.1:{port}/", FLOWER_USER, password)
            time.sleep(0.3)
        raise LocalError(
            f"Flower on 127.0.0.1:{port} did not see the workers within {FLOWER_START_S:.0f} s"
        )

    def check(self) -> None:
        """Raise when the private Redis or a worker we started has died (Flower may)."""
        if not self.server.alive():
            raise LocalError(f"the private redis-server exited; see {self.home / 'redis'}")
        for name in ("tickets", "commit"):
            proc = self.procs.get(name)
            code = proc.poll() if proc else None
            if code is not None:
                tail = self.log_tail(name)
                raise LocalError(
                    f"the local {name} process exited with code {code}"
                    + (f"; its log ends: {tail}" if tail else "")
                )

    def log_tail(self, name: str, lines: int = 5) -> str:
        path = self.root / f"{name}.log"
        try:
            text = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def remember(self, run_id: str, created: float, ttl: float) -> None:
        """Note the run as one of the repository's local runs (see ``status --local``)."""
        remember_run(self.home, run_id, created, ttl)

    def stop(self, grace: float = 10.0) -> None:
        """Stop Flower and the workers, all at once.

        After a FINISHED run they get :data:`IDLE_STOP_S` instead of ``grace``:
        a worker's own shutdown is then done in a fraction of a second, and
        what is left is each pool process's one-second pause before it exits
        (billiard's), which nothing needs.
        """
        self._stop(["flower", "tickets", "commit"], IDLE_STOP_S if self.finished else grace)

    def _stop(self, names: list[str], grace: float) -> None:
        """SIGTERM each process group, wait ``grace`` seconds for all, SIGKILL what is left."""
        procs = [p for p in (self.procs.pop(name, None) for name in names) if p is not None]
        for proc in procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # pool children and ticket commands too
            with suppress(subprocess.TimeoutExpired):
                proc.wait(5)


def _sage_worker() -> list[str]:
    """The command that starts ``sage-worker`` beside this Python."""
    bin_dir = Path(sys.executable).parent
    worker = bin_dir / "sage-worker"
    return [str(worker)] if worker.exists() else [sys.executable, "-m", "sage_tasks.cli.worker"]


def _http_get(port: int, path: str, auth: str) -> tuple[int | None, bytes]:
    """Status and body of ``GET path`` on loopback ``port`` with basic auth (None: no answer)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            status: int = resp.status
            return status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return None, b""


def flower_port(wanted: int) -> int:
    """The port for ``--flower``: ``wanted``, or (0) Flower's default if free, else any free one.

    Raises :class:`ConfigError` (exit 2) when the port asked for is taken.
    """
    candidates = [wanted] if wanted else [FLOWER_PORT]
    for port in candidates:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                pass
    if wanted:
        raise ConfigError(f"--flower {wanted}: port {wanted} on 127.0.0.1 is already in use")
    return free_port()


def _leftovers(home: Path) -> list[int]:
    """Processes a ``--local`` run on ``home`` started and did not stop (it was killed)."""
    mark = f"{MARKER}={home}\0".encode()
    found: list[int] = []
    if not Path("/proc").is_dir():
        return found  # nothing to look at: Linux only
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with suppress(OSError):
            if mark in (entry / "environ").read_bytes():
                found.append(int(entry.name))
    return found


def settle(settings: Settings, repo: str, why: str) -> list[str]:
    """End the runs of ``repo`` still open in the private Redis, and drop their queued work.

    Called with no worker running on it: before a run (what a killed
    ``--local`` left) and after (the run, if Ctrl-C or a dead process ended
    it first). Each such run ends FAILED with ``why``; resubmitting with its
    ``--branch`` resumes it. Returns their ids.
    """
    # Celery (to reach its queues) is loaded by the local commands that start workers
    from sage_tasks.app.celery_app import make_app

    store = RunStore(connect(settings.backend_url), ttl=settings.result_expires)
    open_runs = store.active(repo)
    for run_id in open_runs:
        info = store.get(run_id)
        resume = f"; to resume: sage-submit --local --branch {info.branch}" if info else ""
        store.finish(run_id, repo, status=RunStatus.FAILED, error=f"{why}{resume}")
    app = make_app(settings)
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel  # kombu's Redis channel
        for queue in (settings.ticket_queue, settings.commit_queue):
            channel.queue_purge(queue)
        # what dead workers held unacknowledged would otherwise be delivered again
        channel.client.delete(channel.unacked_key, channel.unacked_index_key)
    return open_runs


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C, so cleanup always happens."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _local_settings(settings: Settings, server: Server) -> Settings:
    """The run's settings with the embedded Redis as broker and result backend."""
    return settings.model_copy(update={"broker_url": server.url, "result_backend": None})


@contextmanager
def _run_folder(home: Path) -> Iterator[Path]:
    """The run's folder for worker logs, after clearing what a killed run left."""
    terminate(_leftovers(home), 10.0)
    root = home / "run"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700)
    try:
        yield root
    finally:
        # deferred: the git layer (and GitPython with it) loads only once a run ends
        from sage_tasks.gitops.removal import remove_tree

        with suppress(OSError):
            remove_tree(root)  # a big repository's worktrees: several threads


def _settle_killed(settings: Settings, repo: Path, human: Console) -> None:
    stale = settle(settings, str(repo), "its sage-submit --local was killed")
    if stale:
        human.print(
            f"[yellow]note:[/] marked FAILED the unfinished local run(s) {', '.join(stale)} "
            "left by a killed sage-submit",
            highlight=False,
        )


def _keep_used_worktrees(workdir: Path, since: float) -> None:
    """Keep for the next run the worktrees this run's ticket worker used, nothing else.

    A later run's worker adopts them (reset in full, then reused ticket after
    ticket), so a big repository is not written again for every run; what
    an earlier run with more slots left, or a ticket that died, is removed.
    """
    # deferred: the git layer loads only once a run ends
    from sage_tasks.errors import GitError
    from sage_tasks.gitops import prune_workdir

    with suppress(OSError, GitError):
        prune_workdir(workdir, keep_idle=True, used_since=since - _CLOCK_SLACK_S)


#: file times come from a coarser clock than ``time.time()``
_CLOCK_SLACK_S = 1.0


@contextmanager
def local_fleet(
    repo: Path,
    concurrency: int,
    settings: Settings,
    human: Console,
    *,
    flower: int | None = None,
) -> Iterator[tuple[LocalFleet, Settings]]:
    """The repository's private Redis and workers; the workers stopped after, whatever happens.

    Yields the fleet (its ``check`` raises when a worker died) and ``settings``
    pointed at the private Redis. ``flower`` (a port, 0: Flower's default or
    any free one) also starts Flower and prints its address and credentials.
    """
    home = local_home(settings.workdir, repo)
    port = flower_port(flower) if flower is not None else None

    def waiting(holder: str) -> None:
        human.print(
            f"another --local run on {repo} is under way ({holder}); waiting for it to end "
            "(Ctrl-C to give up)",
            highlight=False,
        )

    with terminate_as_interrupt():
        prepare_home(home, repo)
        with run_lock(home, waiting), _run_folder(home) as root, private_redis(home) as server:
            local = _local_settings(settings, server)
            _settle_killed(local, repo, human)
            fleet = LocalFleet(root, home, server, human)
            started = time.time()
            try:
                fleet.workdir.mkdir(mode=0o700, exist_ok=True)
                fleet.start_workers(repo, concurrency)
                if port is not None:
                    access = fleet.start_flower(port)
                    human.print(
                        f"Flower: {access.url}  user {access.user}  password {access.password}"
                        "  (until this run ends)",
                        highlight=False,
                    )
                yield fleet, local
            finally:
                fleet.stop()
                with suppress(Exception):  # the Redis may be what died
                    settle(local, str(repo), "its sage-submit --local stopped before the run ended")
                _keep_used_worktrees(fleet.workdir, started)


@contextmanager
def local_reader(settings: Settings, repo: Path) -> Iterator[Settings]:
    """``settings`` pointed at ``repo``'s private Redis, started (no workers) while it is read.

    Raises :class:`UnknownRun` (exit 2) when the repository has no local data.
    """
    home = local_home(settings.workdir, repo)
    if not (home / "redis").is_dir():
        raise UnknownRun(f"no --local run of {repo} is known (no data in {home})")
    with terminate_as_interrupt(), private_redis(home) as server:
        yield _local_settings(settings, server)


def local_hint(settings: Settings, run_id: str | None, repo: str | None) -> str | None:
    """What to add when a run the broker does not know is a ``--local`` run, else None.

    Reads only the lists of runs kept beside each repository's local data
    (no Redis is started): ``run_id``'s repository, or, without a run id,
    whether ``repo`` (default: the current directory) has local runs.
    """
    ttl = settings.result_expires
    if run_id:
        for home in homes(settings.workdir):
            if run_id in local_runs(home, ttl):
                path = repo_of(home)
                return f"it is a --local run of {path}: add --local --repo {shlex.quote(path)}"
        return None
    # GitPython is loaded only when a run id does not settle it
    from sage_tasks import gitops

    try:
        root = gitops.repo_root(Path(repo or "."))
    except SageError:
        return None
    if local_runs(local_home(settings.workdir, root), ttl):
        return f"{root} has --local runs: add --local"
    return None
