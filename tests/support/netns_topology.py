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

What runs on the hosts is :mod:`tests.support.netns_fleet`'s business.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.support.procs import kill_group, kill_groups, pid_exists, signal_all

PREFIX = "sgmh"
#: <prefix><pid of the pytest process>-<topology number>-<host>
_NAME_RE = re.compile(rf"^({PREFIX}(\d+)-\d+)-[A-Za-z0-9]+$")
_counter = itertools.count(1)
#: topologies of this process that are up, by id (the atexit hook tears them down)
_live: dict[str, Topology] = {}


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


def _ns_pids(ns: str) -> list[int]:
    out = ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def destroy_namespace(ns: str) -> None:
    """Kill every process inside ``ns`` (deleting it would leave them running), then delete it."""
    for _ in range(50):
        pids = _ns_pids(ns)
        if not pids:
            break
        signal_all(pids, signal.SIGKILL)
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
        if pid != me and pid_exists(pid):
            continue  # another live session's topology
        destroy_namespace(ns)
        removed.append(ns)
    return removed


@atexit.register
def _down_at_exit() -> None:
    for topo in list(_live.values()):
        with contextlib.suppress(Exception):
            topo.down()


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
        return signal_all(self.signal_host(host, signal.SIGSTOP), signal.SIGKILL)

    def signal_host(self, host: str, sig: signal.Signals) -> list[int]:
        """Send ``sig`` to every process inside ``host`` (SIGSTOP freezes it, SIGCONT thaws)."""
        return signal_all(self.pids(host), sig)
