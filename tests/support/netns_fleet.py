"""sage-tasks on a :class:`~tests.support.netns_topology.Topology` of hosts.

:class:`SageHosts` puts a fleet on the topology: the hub runs redis-server
(bound to its fleet address, with a password), a read-only ``git daemon``
serving the canonical bare repository, and the commit worker with its
supervisor; every worker host runs one ``sage-worker tickets`` that reaches
the hub only over the fleet network; the producer clones the repository over
``git://`` and runs ``sage-submit`` from its own namespace. The ``multihost``
fixture (tests/slow/conftest.py) builds both for a test.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.builders import Submitted
from tests.support.gitrepo import GIT_ENV, git, make_repo
from tests.support.netns_topology import Topology
from tests.support.procs import bin_path, kill_group, kill_groups, wait_for


class Submission:
    """A ``sage-submit --wait`` running in the producer's namespace."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path):
        self.proc = proc
        self.out = out
        self.err = err

    def wait(self, timeout: float) -> Submitted:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc, grace=1)
            raise AssertionError(f"sage-submit did not end within {timeout:g} s") from None
        stdout, stderr = self.out.read_text(errors="replace"), self.err.read_text(errors="replace")
        return Submitted.parse(self.proc.returncode, stdout, stderr, json_out=True)


class SageHosts:
    """sage-tasks on a :class:`Topology` (see the module docs); ``stop`` ends every process."""

    REPO = "project.git"
    REDIS_PORT = 6379

    def __init__(
        self,
        topo: Topology,
        root: Path,
        workers: Sequence[str],
        *,
        visibility_timeout: float = 12,
        ticket_timeout: float = 10,
        concurrency: int = 2,
        heartbeat_timeout: float = 5,
    ):
        self.topo = topo
        self.root = root
        self.workers = list(workers)
        self.concurrency = concurrency
        self.password = secrets.token_hex(16)
        self.hub = topo.addr("hub")
        self.broker = f"redis://:{self.password}@{self.hub}:{self.REDIS_PORT}/0"
        self.repo_url = f"git://{self.hub}/{self.REPO}"
        self.git_root = root / "git"
        self.canonical = self.git_root / self.REPO
        self.settings = {
            "SAGE_BROKER_URL": self.broker,
            "SAGE_VISIBILITY_TIMEOUT": f"{visibility_timeout:g}",
            "SAGE_TICKET_TIMEOUT": f"{ticket_timeout:g}",
            "SAGE_HEARTBEAT_INTERVAL": "1",
            "SAGE_HEARTBEAT_TIMEOUT": f"{heartbeat_timeout:g}",
            "SAGE_SUPERVISOR_INTERVAL": "1",
        }
        self.named: dict[str, subprocess.Popen[bytes]] = {}
        self.submissions = itertools.count(1)

    # -- environment and processes ------------------------------------------------------

    def env(self, host: str, **more: str) -> dict[str, str]:
        """The environment of a process on ``host``: no inherited SAGE_* settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAGE_")}
        env.update(GIT_ENV)
        env.update(self.settings)
        env.update(
            {
                "SAGE_WORKDIR": str(self.root / host / "work"),
                "FLEET_HOST": host,
                "PYTHONUNBUFFERED": "1",
                "REDISCLI_AUTH": self.password,
            }
        )
        env.update(more)
        return env

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, tail: int = 6000) -> str:
        """The tail of every process's log, for assertion messages."""
        paths = sorted((self.root / "logs").glob("*.log"))
        return "\n".join(f"== {p.stem} ==\n{p.read_text(errors='replace')[-tail:]}" for p in paths)

    def _wait_each(
        self,
        names: Sequence[str],
        check: Callable[[str], bool],
        what: str,
        timeout: float,
        interval: float = 0.2,
    ) -> None:
        """Until ``check(name)`` holds for each name in turn (``what`` says what is awaited,
        ``{}`` standing for the name)."""
        for name in names:
            wait_for(
                functools.partial(check, name),
                timeout,
                what.format(name),
                interval,
                logs=self.logs,
            )

    def start_process(
        self, name: str, host: str, argv: Sequence[str], **env: str
    ) -> subprocess.Popen[bytes]:
        proc = self.topo.popen(host, argv, env=self.env(host, **env), log=self.log_path(name))
        self.named[name] = proc
        return proc

    def stop_process(self, name: str, grace: float = 3.0) -> None:
        proc = self.named.pop(name, None)
        if proc is not None:
            kill_group(proc, grace=grace)

    # -- the hub ---------------------------------------------------------------------

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        data = self.root / "hub" / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.start_process(
            "redis",
            "hub",
            [
                binary,
                "--bind",
                self.hub,
                "--port",
                str(self.REDIS_PORT),
                "--requirepass",
                self.password,
                "--dir",
                str(data),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                "noeviction",
                "--loglevel",
                "notice",
            ],
        )

    def redis_cli(self, host: str, *args: str, timeout: float = 10) -> str:
        """``redis-cli`` against the hub's Redis, run from ``host``; its stdout ('' on failure)."""
        try:
            proc = self.topo.run(
                host,
                ["redis-cli", "-h", self.hub, "-p", str(self.REDIS_PORT), *args],
                env=self.env(host),
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return ""
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def wait_redis(self, hosts: Sequence[str], timeout: float = 20) -> None:
        self._wait_each(hosts, self._pong, "redis on the hub, seen from {}", timeout)

    def _pong(self, host: str) -> bool:
        return self.redis_cli(host, "ping") == "PONG"

    def start_git_daemon(self) -> None:
        self.start_process(
            "git-daemon",
            "hub",
            [
                "git",
                "daemon",
                "--reuseaddr",
                f"--base-path={self.git_root}",
                "--export-all",
                f"--listen={self.hub}",
                "--port=9418",
                "--informative-errors",
                "--log-destination=stderr",
                str(self.git_root),
            ],
        )

    def ls_remote(self, host: str, timeout: float = 20) -> str:
        proc = self.topo.run(
            host, ["git", "ls-remote", self.repo_url], env=self.env(host), timeout=timeout
        )
        return proc.stdout if proc.returncode == 0 else ""

    def wait_git(self, hosts: Sequence[str], timeout: float = 20) -> None:
        self._wait_each(hosts, self._serves_main, "git daemon on the hub, seen from {}", timeout)

    def _serves_main(self, host: str) -> bool:
        return "refs/heads/main" in self.ls_remote(host)

    def start_commit_worker(self, *, with_url: bool = True) -> None:
        """The hub's commit worker (``with_url`` False: started without the fleet's
        ``--repo-url``, so it refuses the runs that name it)."""
        url = ["--repo-url", self.repo_url] if with_url else []
        self.start_process(
            "commit",
            "hub",
            [
                bin_path("sage-worker"),
                "commit",
                "--repo",
                str(self.canonical),
                *url,
                "--hostname",
                "commit@hub",
            ],
        )

    def cancel(
        self, run_id: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``sage-submit cancel [RUN]`` from the producer."""
        return self.topo.run(
            "producer",
            [bin_path("sage-submit"), "cancel", *([run_id] if run_id else [])],
            env=self.env("producer"),
            timeout=timeout,
        )

    # -- worker hosts --------------------------------------------------------------------

    def start_ticket_worker(self, host: str) -> None:
        self.start_process(
            host,
            host,
            [
                bin_path("sage-worker"),
                "tickets",
                f"--hostname={host}@{host}",
                f"--concurrency={self.concurrency}",
            ],
        )

    def wait_ready(self, names: Sequence[str], timeout: float = 60) -> None:
        """Until each Celery worker says it is ready (connected and consuming)."""
        self._wait_each(names, self._ready, "worker {} to be ready", timeout, interval=0.3)

    def _ready(self, name: str) -> bool:
        return " ready." in self.log(name)

    # -- the whole fleet ------------------------------------------------------------------

    def start(self, index: dict[str, Any], files: dict[str, str | bytes] | None = None) -> None:
        """The canonical repository, the hub's services, every worker host; all ready."""
        make_repo(self.canonical, files or {}, index, bare=True)
        self.start_redis()
        self.start_git_daemon()
        everyone = ["hub", *self.workers, "producer"]
        self.wait_redis(everyone)
        self.wait_git(everyone)
        self.start_commit_worker()
        for host in self.workers:
            self.start_ticket_worker(host)
        self.wait_ready(["commit", *self.workers])

    def stop(self) -> None:
        kill_groups(list(self.named.values()), grace=2.0)
        self.named.clear()

    # -- the producer ----------------------------------------------------------------------

    def producer_clone(self) -> Path:
        """The producer's own clone of the hub's repository, over git://."""
        dest = self.root / "producer" / f"clone-{next(self.submissions)}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        proc = self.topo.run(
            "producer",
            ["git", "clone", "-q", self.repo_url, str(dest)],
            env=self.env("producer"),
            timeout=60,
        )
        assert proc.returncode == 0, f"clone over git:// failed: {proc.stderr}"
        return dest

    def submit(self, *args: str, branch: str | None = None) -> Submission:
        """Start ``sage-submit --wait --json`` from the producer's namespace, from its own clone.

        ``branch``: resume that branch (fetched into the clone, passed as ``--branch``).
        """
        clone = self.producer_clone()
        if branch is not None:
            fetched = self.topo.run(
                "producer",
                ["git", "-C", str(clone), "fetch", "-q", "origin", f"+{branch}:{branch}"],
                env=self.env("producer"),
                timeout=60,
            )
            assert fetched.returncode == 0, f"fetching {branch} failed: {fetched.stderr}"
            args = (*args, "--branch", branch)
        n = clone.name.rsplit("-", 1)[1]
        out = self.root / "logs" / f"submit-{n}.out"
        err = self.log_path(f"submit-{n}")
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            bin_path("sage-submit"),
            "--repo",
            str(clone),
            "--repo-url",
            self.repo_url,
            "--broker",
            self.broker,
            "--wait",
            "--json",
            *args,
        ]
        with open(out, "wb") as stdout:
            proc = self.topo.popen(
                "producer", argv, env=self.env("producer"), log=err, stdout=stdout
            )
        return Submission(proc, out, err)

    def status(
        self, run_id: str | None = None, timeout: float = 30, check: bool = True
    ) -> dict[str, Any]:
        """``sage-submit status [RUN] --json`` from the producer (default: the latest run).

        With ``check`` False, a failure (no run yet, broker unreachable) gives ``{}``.
        """
        proc = self.topo.run(
            "producer",
            [bin_path("sage-submit"), "status", *([run_id] if run_id else []), "--json"],
            env=self.env("producer"),
            timeout=timeout,
        )
        if proc.returncode != 0 and not check:
            return {}
        assert proc.returncode == 0, f"status failed ({proc.returncode}): {proc.stderr}"
        data: dict[str, Any] = json.loads(proc.stdout)
        return data


#: the ``multihost`` fixture: call it with the worker host names (and SageHosts options)
Multihost = Callable[..., SageHosts]


def host_of(node: str) -> str:
    """The host part of a worker's node name (``w1@w1`` -> ``w1``)."""
    return node.rsplit("@", 1)[-1]


def check_completed(fleet: SageHosts, res: Any, tickets: list[dict[str, Any]]) -> dict[str, Any]:
    """The run ended with every one of ``tickets`` COMPLETED, and the branch where it says;
    its JSON."""
    assert res.code == 0, f"sage-submit exit {res.code}\n{res.stderr[-3000:]}\n{fleet.logs()}"
    data: dict[str, Any] = res.data
    assert data["deferred"] == {} and data["blocked"] == [], data
    assert sorted(data["completed"]) == sorted(t["id"] for t in tickets)
    assert {r["state"] for r in data["tickets"]} == {"COMPLETED"}
    assert git(fleet.canonical, "rev-parse", data["branch"]).strip() == data["head"]
    return data
