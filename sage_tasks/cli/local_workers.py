"""The processes a ``--local`` run starts on its private Redis: two workers and Flower.

:class:`LocalFleet` starts them with their logs in the run's folder, tells
when one has died and stops them all at once; :mod:`sage_tasks.cli.local`
decides when.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from sage_tasks.cli.local_redis import Server, free_port, remember_run
from sage_tasks.config import Settings
from sage_tasks.errors import ConfigError, LocalError

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

    def __init__(
        self, root: Path, home: Path, server: Server, human: Console, settings: Settings, slots: int
    ):
        self.root = root
        self.home = home
        self.server = server
        self.human = human
        #: the run's settings, pointed at the private Redis
        self.settings = local_settings(settings, server)
        #: the ticket worker's slots
        self.slots = slots
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: the run submitted on the fleet (None: none yet)
        self.run_id: str | None = None
        #: the run ended FINISHED: nothing is in flight, so the workers need no grace
        self.finished = False
        #: the workers' node names are ``tickets-<node>@host`` and ``commit-<node>@host``
        self.node = f"local-{os.getpid()}"
        #: Flower's port and ``user:password``, while it starts
        self._flower: tuple[int, str] | None = None
        #: the repository the commit worker serves
        self.repo: Path | None = None

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

    def start_workers(self, repo: Path) -> None:
        """Start the ticket worker and, with cores to spare, the commit worker.

        They boot while the submitter reads and plans the index, which keeps
        one core busy. On two cores (or one) the commit worker, which the
        run needs only once it is stored, starts in :meth:`ready` instead:
        it boots while the run is stored, Redis's work, the submitter
        waiting; so each worker boots on the core left free.
        """
        self.repo = repo
        self._spawn(
            "tickets",
            [
                *_sage_worker(),
                "tickets",
                f"--concurrency={self.slots}",
                f"--hostname=tickets-{self.node}@%h",
                "--loglevel=WARNING",
            ],
            self.env(),
        )
        if _cores() > 2:
            self._start_commit_worker()

    def _start_commit_worker(self) -> None:
        """Start the commit worker of :attr:`repo` (once)."""
        if "commit" in self.procs or self.repo is None:
            return
        self._spawn(
            "commit",
            [
                *_sage_worker(),
                "commit",
                "--repo",
                str(self.repo),
                f"--hostname=commit-{self.node}@%h",
                "--loglevel=WARNING",
            ],
            self.env(),
        )

    def start_flower(self, port: int) -> None:
        """Start Flower on loopback ``port`` behind a generated password (see :meth:`ready`)."""
        password = secrets.token_hex(12)
        auth = f"{FLOWER_USER}:{password}"
        self._spawn(
            "flower",
            [*_sage_worker(), "flower", f"--port={port}", "--address=127.0.0.1"],
            {**self.env(), "FLOWER_BASIC_AUTH": auth},
        )
        self._flower = (port, auth)

    def ready(self) -> None:
        """Start what the run needs once it is sent (the commit worker, if not yet), and
        wait for what must see it from its start: Flower, if started, once it receives the
        ticket worker's events (it learns about tasks only from events); then print
        Flower's address and credentials."""
        self._start_commit_worker()
        if self._flower is None:
            return
        port, auth = self._flower
        access = self._flower_access(port, auth)
        self._flower = None
        self.human.print(
            f"Flower: {access.url}  user {access.user}  password {access.password}"
            "  (until this run ends)",
            highlight=False,
        )

    def _flower_access(self, port: int, auth: str) -> FlowerAccess:
        node = f"tickets-{self.node}@".encode()
        deadline = time.monotonic() + FLOWER_START_S
        while time.monotonic() < deadline:
            if self.procs["flower"].poll() is not None:
                raise LocalError(f"Flower did not start: {self.log_tail('flower')}")
            status, body = _http_get(port, "/api/workers?status=1", auth)
            if status == 200 and node in body:
                return FlowerAccess(f"http://127.0.0.1:{port}/", FLOWER_USER, auth.split(":")[1])
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

    def remember(self, run_id: str, created: float) -> None:
        """Note the run, about to be sent, as one of the repository's local runs (see
        ``status --local``): from now on the fleet has a run to wind up at its end."""
        remember_run(self.home, run_id, created, self.settings.result_expires)
        self.run_id = run_id

    def stop(self, grace: float = 10.0) -> None:
        """Stop Flower and the workers, all at once.

        After a FINISHED run, or before any run, they get :data:`IDLE_STOP_S`
        instead of ``grace``: a worker's own shutdown is then done in a
        fraction of a second, and what is left is each pool process's
        one-second pause before it exits (billiard's), which nothing needs.
        """
        idle = self.finished or self.run_id is None
        self._stop(["flower", "tickets", "commit"], IDLE_STOP_S if idle else grace)

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


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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


def local_settings(settings: Settings, server: Server) -> Settings:
    """The run's settings with the embedded Redis as broker and result backend."""
    return settings.model_copy(update={"broker_url": server.url, "result_backend": None})
