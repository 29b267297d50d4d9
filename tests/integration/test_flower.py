"""``sage-worker flower`` on real processes: credentials, loopback, task arguments, TLS."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.fleet import Fleet, bin_path, unique_queue, wait_until
from tests.support.gitrepo import make_repo
from tests.support.redis_server import RedisServer, free_port
from tests.support.tls import TlsRedisServer, make_certs

BROKER_PASSWORD = "broker-pw-91d2"
FLOWER_USER, FLOWER_PASSWORD = "admin", "flower-pw-3b7e"


def get(port: int, path: str, auth: str | None = None) -> tuple[int | None, bytes]:
    """Status and body of ``GET path`` (status None when nothing answers)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status: int = resp.status
            return status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None, b""


def listening(port: int) -> list[str]:
    """The local addresses of the sockets listening on TCP ``port`` (from /proc/net)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                    found.append(address)
    return found


def ticket(tid: str, run: str) -> dict[str, Any]:
    return {"id": tid, "title": f"ticket {tid}", "state": "UNPROCESSED", "run": run}


@dataclass
class Monitored:
    fleet: Fleet
    port: int
    run: dict[str, Any]


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    """Flower with credentials beside a fleet that has finished one run."""
    root = tmp_path_factory.mktemp("flower")
    server = RedisServer(root / "redis", password=BROKER_PASSWORD)
    server.start()
    fleet = Fleet(root, server)
    port = free_port()
    try:
        fleet.start(
            "flower",
            "flower",
            f"--port={port}",
            FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{FLOWER_PASSWORD}",
        )
        fleet.start_tickets("tickets", concurrency=1)
        repo = make_repo(
            root / "repo",
            {},
            {"version": "1.0", "tickets": [ticket("FLW-1", "echo one > one.txt")]},
            bare=True,
        )
        queue = unique_queue()
        fleet.start_commit(repo, queue)
        assert wait_until(lambda: get(port, "/")[0] is not None, 30), fleet.log("flower")
        res = fleet.submit(repo, "--wait", "--json", queue=queue)
        assert res.code == 0 and res.data is not None, res.stderr + fleet.logs()
        yield Monitored(fleet, port, res.data)
    finally:
        fleet.stop()
        server.stop(kill=True)


def test_requests_without_the_right_credentials_get_401_and_with_them_200(
    monitored: Monitored,
) -> None:
    good = f"{FLOWER_USER}:{FLOWER_PASSWORD}"
    for path in ("/", "/api/workers", "/api/tasks", "/tasks"):
        assert get(monitored.port, path)[0] == 401, path
        assert get(monitored.port, path, f"{FLOWER_USER}:wrong")[0] == 401, path
        assert get(monitored.port, path, f"nobody:{FLOWER_PASSWORD}")[0] == 401, path
        assert get(monitored.port, path, good)[0] == 200, path


def test_flower_listens_on_the_loopback_address_only_by_default(monitored: Monitored) -> None:
    addresses = listening(monitored.port)
    assert addresses == ["0100007F"], addresses  # 127.0.0.1, and no IPv6 or wildcard socket
    assert f"starting Flower on 127.0.0.1:{monitored.port}" in monitored.fleet.log("flower")


def test_the_tasks_of_a_real_run_show_their_ticket_id_and_run_id_in_their_arguments(
    monitored: Monitored,
) -> None:
    run_id = monitored.run["run_id"]
    auth = f"{FLOWER_USER}:{FLOWER_PASSWORD}"
    seen: dict[str, str] = {}

    def shown() -> bool:
        status, body = get(monitored.port, "/api/tasks", auth)
        if status != 200:
            return False
        for task in json.loads(body).values():
            if run_id in str(task.get("args")) and "'FLW-1'" in str(task.get("args")):
                seen[task["name"]] = task["args"]
        return {"sage.run_ticket", "sage.commit_ticket"} <= set(seen)

    assert wait_until(shown, 20), seen
    assert seen["sage.run_ticket"] == repr((run_id, "FLW-1"))


def test_no_password_is_on_flowers_command_line_or_in_its_log(monitored: Monitored) -> None:
    pid = monitored.fleet.procs["flower"].pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert "flower" in cmdline
    log = monitored.fleet.log("flower")
    for secret in (BROKER_PASSWORD, FLOWER_PASSWORD):
        assert secret not in cmdline and secret not in log


@pytest.mark.parametrize(
    "auth",
    [None, "", "admin", ":pw", "admin:", "admin:pw,other:", " :pw"],
    ids=["unset", "empty", "no colon", "no user", "no password", "one empty of two", "blank"],
)
def test_flower_refuses_to_start_without_proper_credentials(
    tmp_path: Path, auth: str | None
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    if auth is not None:
        env["FLOWER_BASIC_AUTH"] = auth
    port = free_port()
    proc = subprocess.run(
        [bin_path("sage-worker"), "flower", f"--port={port}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sage: error: FLOWER_BASIC_AUTH"), lines
    assert "pw" not in lines[0]
    assert listening(port) == []


def test_flower_starts_without_credentials_only_when_told_to(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    fleet = Fleet(tmp_path, server)
    port = free_port()
    try:
        fleet.start("flower", "flower", f"--port={port}", "--no-auth")
        assert wait_until(lambda: get(port, "/")[0] == 200, 30), fleet.log("flower")
        assert listening(port) == ["0100007F"]
    finally:
        fleet.stop()
        server.stop(kill=True)


def test_flower_checks_a_tls_brokers_certificate_as_the_workers_do(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    server = TlsRedisServer(tmp_path / "redis", certs)
    server.start()
    fleet = Fleet(tmp_path, server)
    bare = f"rediss://127.0.0.1:{server.port}/0"  # no TLS options: certificates are checked
    auth = f"{FLOWER_USER}:{FLOWER_PASSWORD}"
    try:
        for name, env in (
            ("untrusting", {"SAGE_BROKER_URL": bare}),
            ("trusting", {"SAGE_BROKER_URL": bare, "SSL_CERT_FILE": str(certs.ca)}),
            ("explicit", {"SAGE_BROKER_URL": server.tls_url()}),
        ):
            fleet.start(name, "flower", f"--port={free_port()}", FLOWER_BASIC_AUTH=auth, **env)
        for name in ("trusting", "explicit"):
            assert wait_until(lambda n=name: "Connected to rediss://" in fleet.log(n), 30), (
                fleet.log(name)
            )
        assert wait_until(lambda: "certificate verify failed" in fleet.log("untrusting"), 30), (
            fleet.log("untrusting")
        )
        time.sleep(0.5)
        log = fleet.log("untrusting")
        assert "Connected to" not in log and "insecure" not in log
    finally:
        fleet.stop()
        server.stop(kill=True)
