"""A real sage-tasks fleet for tests: sage-worker processes on a private redis-server.

Everything runs as separate processes started from the installed entry points,
exactly as an operator would start them; nothing is eager or mocked.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.support.builders import Submitted
from tests.support.gitrepo import make_repo
from tests.support.procs import bin_path, kill_group, kill_groups, wait_until
from tests.support.redis_server import RedisServer


class Fleet:
    """Worker processes on one redis-server; every process is killed at ``stop``."""

    def __init__(self, root: Path, redis: RedisServer, **env: str):
        self.root = root
        self.redis = redis
        self.extra_env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        root.mkdir(parents=True, exist_ok=True)

    def env(self, **more: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SAGE_BROKER_URL": self.redis.url,
                "SAGE_WORKDIR": str(self.root / "work"),
                "SAGE_VISIBILITY_TIMEOUT": "60",
                "SAGE_TICKET_TIMEOUT": "30",
                "SAGE_HEARTBEAT_INTERVAL": "1",
                "SAGE_HEARTBEAT_TIMEOUT": "10",
                "SAGE_SUPERVISOR_INTERVAL": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        env.update(more)
        return env

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [bin_path("sage-worker"), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(**env),
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_tickets(self, name: str = "tickets", concurrency: int = 2, **env: str) -> None:
        workdir = str(self.root / f"work-{name}")
        self.start(
            name,
            "tickets",
            f"--concurrency={concurrency}",
            f"--hostname={name}@%h",
            SAGE_WORKDIR=workdir,
            **env,
        )

    def start_commit(self, repo: Path, queue: str, name: str | None = None, **env: str) -> str:
        node = name or f"commit-{queue}"
        self.start(
            node,
            "commit",
            "--repo",
            str(repo),
            "--commit-queue",
            queue,
            f"--hostname={node}@%h",
            **env,
        )
        return node

    @contextlib.contextmanager
    def serving(self, repo: Path) -> Iterator[tuple[str, str]]:
        """A commit worker for ``repo`` on a queue of its own: (queue, node name); killed after."""
        queue = unique_queue()
        node = self.start_commit(repo, queue)
        try:
            yield queue, node
        finally:
            self.kill(node)

    def launch(self, repo: Path, queue: str) -> str:
        """Submit without waiting; the run id."""
        res = self.submit(repo, queue=queue)
        assert res.code == 0, res.stderr
        return res.stdout.strip()

    def submit(
        self, repo: Path, *args: str, queue: str, timeout: float = 180, **env: str
    ) -> Submitted:
        cmd = [bin_path("sage-submit"), "--repo", str(repo), "--commit-queue", queue, *args]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=self.env(**env)
        )
        return Submitted.parse(proc.returncode, proc.stdout, proc.stderr, json_out="--json" in args)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"== {n} ==\n{self.log(n)[-4000:]}" for n in self.procs)

    def wait_ready(self, *names: str, timeout: float = 60) -> None:
        """Wait until each worker's log says it is ready to consume."""
        for name in names:
            ok = wait_until(lambda n=name: " ready." in self.log(n), timeout=timeout)
            assert ok, f"worker {name} did not start:\n{self.logs()}"

    def kill(self, name: str) -> None:
        """SIGKILL the process group of ``name`` (gone already: nothing)."""
        proc = self.procs.pop(name, None)
        if proc is not None:
            kill_group(proc, grace=None)

    def stop(self) -> None:
        """SIGTERM every process group at once; SIGKILL what is left after 15 s."""
        kill_groups(list(self.procs.values()), grace=15)
        self.procs.clear()


@contextlib.contextmanager
def fleet_on(server: RedisServer, root: Path, **env: str) -> Iterator[Fleet]:
    """A fleet on ``server`` (started already), ``env`` its settings; the fleet's processes,
    then the server, stopped after."""
    fleet = Fleet(root, server, **env)
    try:
        yield fleet
    finally:
        fleet.stop()
        server.stop(kill=True)


@contextlib.contextmanager
def private_fleet(
    root: Path, *, concurrency: int | None = 2, password: str | None = None, **env: str
) -> Iterator[Fleet]:
    """A private redis-server (in ``root/redis``) and a fleet on it, ``env`` its settings;
    every process stopped after.

    The fleet has one ticket worker, ``tickets``, with ``concurrency`` slots;
    None: no worker yet.
    """
    server = RedisServer(root / "redis", password=password)
    server.start()
    with fleet_on(server, root, **env) as fleet:
        if concurrency is not None:
            fleet.start_tickets("tickets", concurrency=concurrency)
        yield fleet


@contextlib.contextmanager
def graph_runner(fleet: Fleet, root: Path) -> Iterator[Callable[..., tuple[Path, Submitted]]]:
    """Run graphs on ``fleet`` with ``--wait --json``: each in a repository of its own,
    with a commit worker of its own (all stopped after); ``expect`` checks the exit code."""
    started: list[str] = []
    count = itertools.count()

    def go(
        tickets: list[dict[str, Any]],
        *args: str,
        files: dict[str, str | bytes] | None = None,
        bare: bool = False,
        expect: int | None = None,
        commit_env: dict[str, str] | None = None,
    ) -> tuple[Path, Submitted]:
        index = {"version": "1.0", "tickets": tickets}
        repo = make_repo(root / f"repo{next(count)}", files or {}, index, bare=bare)
        queue = unique_queue()
        started.append(fleet.start_commit(repo, queue, **(commit_env or {})))
        res = fleet.submit(repo, "--wait", "--json", *args, queue=queue)
        if expect is not None:
            assert res.code == expect, f"{res.stdout}\n{res.stderr}\n{fleet.logs()}"
        return repo, res

    try:
        yield go
    finally:
        for name in started:
            fleet.kill(name)


def unique_queue() -> str:
    """A commit queue name no other test uses."""
    return f"commit-{uuid.uuid4().hex[:8]}"
