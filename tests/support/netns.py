"""Several "hosts" on one machine: Linux network namespaces on a private switch.

A :class:`Topology` builds, for one test::

    switch namespace  <id>-sw        bridge br0; one veth end per host, named after the host
    host namespaces   <id>-<host>    eth0 = 10.77.X.N/24 (X random per topology), lo up

Nothing is created in the root namespace: the bridge, its ports and every
address live in namespaces of their own, so a topology clashes with nothing on
the machine (another session's test, docker, the host's firewall rules).
Cutting a host off is ``ip link set <host> down`` on its switch port: the host
keeps its address and its own local connections, but no packet reaches the
others, exactly like a pulled cable.

Processes run inside a host with ``ip netns exec`` in a session of their own.
Tear-down (:meth:`Topology.down`, also run at exit and by the next topology for
anything a killed run left behind) kills the process groups it started, then
every process still inside the namespaces, then deletes the namespaces.

:class:`SageHosts` puts a sage-tasks fleet on a topology: the hub runs
redis-server (bound to its fleet address, with a password), a read-only
``git daemon`` serving the canonical bare repository, and the commit worker
with its supervisor; every worker host runs one ``sage-worker tickets`` that
reaches the hub only over the fleet network; the producer clones the
repository over ``git://`` and runs ``sage-submit`` from its own namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.gitrepo import GIT_ENV, make_repo

PREFIX = "sgmh"
#: <prefix><pid of the pytest process>-<topology number>-<host>
_NAME_RE = re.compile(rf"^({PREFIX}(\d+)-\d+)-[A-Za-z0-9]+$")
_counter = itertools.count(1)
#: topologies of this process that are up, by id (the atexit hook tears them down)
_live: dict[str, Topology] = {}
BIN = Path(sys.executable).parent


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip`` (iproute2); raise with its stderr when ``check`` and it fails."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def namespaces() -> list[str]:
    """Names of every named network namespace (``ip netns list``)."""
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ns_pids(ns: str) -> list[int]:
    out = ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def destroy_namespace(ns: str) -> None:
    """Kill every process inside ``ns`` (deleting it would leave them running), then delete it."""
    for _ in range(50):
        pids = _ns_pids(ns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    ip("netns", "del", ns, check=False)


def clean_leftovers() -> list[str]:
    """Delete namespaces left behind by a dead pytest process, or stale ones of this process."""
    removed = []
    me = os.getpid()
    for ns in namespaces():
        m = _NAME_RE.match(ns)
        if m is None:
            continue
        topo_id, pid = m.group(1), int(m.group(2))
        if pid == me and topo_id in _live:
            continue
        if pid != me and _pid_alive(pid):
            continue  # another live session's topology
        destroy_namespace(ns)
        removed.append(ns)
    return removed


@atexit.register
def _down_at_exit() -> None:
    for topo in list(_live.values()):
        with contextlib.suppress(Exception):
            topo.down()


def kill_groups(procs: Sequence[subprocess.Popen[Any]], grace: float = 3.0) -> None:
    """SIGTERM the process groups of ``procs`` at once, SIGKILL them after ``grace`` s, reap.

    A leader reaped earlier is left alone: its group id may belong to someone
    else by now (what it left in its namespace dies with the namespace).
    """
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def kill_group(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """:func:`kill_groups` for one process."""
    kill_groups([proc], grace)


@dataclass
class Host:
    """One host: its namespace, its address on the fleet network, its port on the switch."""

    name: str
    ns: str
    addr: str

    @property
    def port(self) -> str:
        """The switch-side end of the host's veth pair (in the switch namespace)."""
        return self.name


@dataclass
class Topology:
    """A switch namespace with a bridge and one namespace per host (see the module docs)."""

    names: Sequence[str]
    id: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}-{next(_counter)}")
    net: str = field(default_factory=lambda: f"10.77.{random.randint(16, 250)}")
    hosts: dict[str, Host] = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(init=False, default_factory=list)
    built: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        for name in self.names:
            if not re.fullmatch(r"[a-z][a-z0-9]{0,13}", name) or name in ("sw", "br0"):
                raise ValueError(f"bad host name {name!r}")
        self.hosts = {
            name: Host(name, f"{self.id}-{name}", f"{self.net}.{i}")
            for i, name in enumerate(self.names, start=1)
        }

    @property
    def switch(self) -> str:
        return f"{self.id}-sw"

    def addr(self, host: str) -> str:
        return self.hosts[host].addr

    def up(self) -> Topology:
        """Build everything; on any failure, tear down what was built and raise."""
        clean_leftovers()
        _live[self.id] = self
        try:
            self._add_ns(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for host in self.hosts.values():
                self._add_ns(host.ns)
                ip(
                    "-n",
                    self.switch,
                    "link",
                    "add",
                    host.port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    host.ns,
                )
                ip("-n", self.switch, "link", "set", host.port, "master", "br0")
                ip("-n", self.switch, "link", "set", host.port, "up")
                ip("-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
                ip("-n", host.ns, "link", "set", "eth0", "up")
        except BaseException:
            self.down()
            raise
        return self

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.built.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        """Kill what runs in the hosts, delete every namespace; safe to call twice."""
        kill_groups(self.procs, grace=2.0)
        self.procs.clear()
        for ns in reversed(self.built):
            destroy_namespace(ns)
        self.built.clear()
        _live.pop(self.id, None)

    # -- processes -------------------------------------------------------------------

    def _argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host].ns, *argv]

    def popen(
        self,
        host: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        log: Path,
        stdout: IO[bytes] | int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host`` in a new session, output appended to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self._argv(host, argv),
                stdout=stdout if stdout is not None else out,
                stderr=out,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host`` and wait (its process group is killed on timeout)."""
        proc = subprocess.Popen(
            self._argv(host, argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            kill_group(proc, grace=0)
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    # -- faults ------------------------------------------------------------------------

    def cut(self, host: str) -> None:
        """Unplug ``host``: its switch port goes down (its own address stays, no carrier)."""
        ip("-n", self.switch, "link", "set", self.hosts[host].port, "down")

    def restore(self, host: str) -> None:
        """Plug ``host`` back in."""
        ip("-n", self.switch, "link", "set", self.hosts[host].port, "up")

    def pids(self, host: str) -> list[int]:
        """Every process running inside ``host``."""
        return _ns_pids(self.hosts[host].ns)

    def kill_host(self, host: str) -> list[int]:
        """Kill ``host`` whole: every process inside it, frozen first (nobody forks or reaps
        while we aim), then SIGKILLed. Returns the pids killed."""
        pids = self.signal_host(host, signal.SIGSTOP)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def signal_host(self, host: str, sig: signal.Signals) -> list[int]:
        """Send ``sig`` to every process inside ``host`` (SIGSTOP freezes it, SIGCONT thaws)."""
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.2,
    *,
    logs: Callable[[], str] | None = None,
) -> Any:
    """Poll until ``predicate`` returns something true and return it.

    After ``timeout`` seconds, fail saying ``what`` was awaited, with ``logs()``
    (read then, not when the wait began).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"\n{logs()}" if logs is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{tail}")
        time.sleep(interval)


# -- a sage-tasks fleet on a topology ---------------------------------------------------


@dataclass
class Submitted:
    """What ``sage-submit`` did: exit code, parsed JSON (when any), and its output."""

    code: int
    data: dict[str, Any] | None
    stdout: str
    stderr: str


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
        stdout = self.out.read_text(errors="replace")
        data = None
        with contextlib.suppress(json.JSONDecodeError):
            data = json.loads(stdout) if stdout.strip() else None
        return Submitted(self.proc.returncode, data, stdout, self.err.read_text(errors="replace"))


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

    def start_process(
        self, name: str, host: str, argv: Sequence[str], **env: str
    ) -> subprocess.Popen[bytes]:
        proc = self.topo.popen(host, argv, env=self.env(host, **env), log=self.log_path(name))
        self.named[name] = proc
        return proc

    def stop_process(self, name: str, grace: float = 3.0) -> None:
        proc = self.named.pop(name, None)
        if proc is not None:
            kill_group(proc, grace)

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
        for host in hosts:
            wait_for(
                functools.partial(self._pong, host),
                timeout,
                f"redis on the hub, seen from {host}",
                logs=self.logs,
            )

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
        for host in hosts:
            wait_for(
                functools.partial(self._serves_main, host),
                timeout,
                f"git daemon on the hub, seen from {host}",
                logs=self.logs,
            )

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
                str(BIN / "sage-worker"),
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
            [str(BIN / "sage-submit"), "cancel", *([run_id] if run_id else [])],
            env=self.env("producer"),
            timeout=timeout,
        )

    # -- worker hosts --------------------------------------------------------------------

    def start_ticket_worker(self, host: str) -> None:
        self.start_process(
            host,
            host,
            [
                str(BIN / "sage-worker"),
                "tickets",
                f"--hostname={host}@{host}",
                f"--concurrency={self.concurrency}",
            ],
        )

    def wait_ready(self, names: Sequence[str], timeout: float = 60) -> None:
        """Until each Celery worker says it is ready (connected and consuming)."""
        for name in names:
            wait_for(
                functools.partial(self._ready, name),
                timeout,
                f"worker {name} to be ready",
                interval=0.3,
                logs=self.logs,
            )

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
            str(BIN / "sage-submit"),
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
            [str(BIN / "sage-submit"), "status", *([run_id] if run_id else []), "--json"],
            env=self.env("producer"),
            timeout=timeout,
        )
        if proc.returncode != 0 and not check:
            return {}
        assert proc.returncode == 0, f"status failed ({proc.returncode}): {proc.stderr}"
        data: dict[str, Any] = json.loads(proc.stdout)
        return data


@pytest.fixture
def multihost(tmp_path: Path) -> Iterator[Callable[..., SageHosts]]:
    """Build a topology (hub, worker hosts, producer) and a fleet on it; always torn down.

    Call it with the worker host names (and SageHosts options); then ``start``
    the fleet with an index.
    """
    made: list[tuple[Topology, SageHosts]] = []

    def make(workers: Sequence[str] = ("w1", "w2", "w3"), **options: Any) -> SageHosts:
        topo = Topology(["hub", *workers, "producer"]).up()
        fleet = SageHosts(topo, tmp_path / f"fleet{len(made) + 1}", workers, **options)
        made.append((topo, fleet))
        return fleet

    try:
        yield make
    finally:
        for topo, fleet in made:
            try:
                fleet.stop()
            finally:
                topo.down()
