"""The shipped ``docker-compose.yml`` and ``workers/Dockerfile``, run for real.

``make test-compose`` runs this module (never ``make test``): it needs a Docker
engine, which ``tests/compose/run.sh`` provides (with stand-in base images
where Docker Hub cannot be reached). One stack is brought up for the whole
module with a real repository mounted, exactly as the compose file's header
tells a user, and the tests below run in order against it: a graph submitted
from the host, three ticket containers, a container killed mid-ticket, Flower,
a Redis restart, and ``down -v`` at the end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.builders import ticket, writes
from tests.support.gitrepo import INDEX, commit_files, index_bytes, make_repo
from tests.support.procs import bin_path, wait_until
from tests.support.redis_server import free_port
from tests.support.runs import states, ticket_log

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "sage-tasks-compose-test"
IMAGE = "sage-tasks-worker"
#: the repository's owner: a uid no account in the image or on the host has
REPO_UID = 10002
#: short enough that a killed container's ticket comes back within the test
VISIBILITY_TIMEOUT = 30
#: when make test-compose started (its clock), or this module
STARTED = float(os.environ.get("TEST_COMPOSE_STARTED") or time.time())


def note(text: str) -> None:
    """A timed progress line on the terminal (make test-compose runs pytest with -s)."""
    print(f"test-compose: [{time.time() - STARTED:4.0f}s] {text}", file=sys.stderr, flush=True)


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


@dataclass
class Stack:
    """The compose project under test and how to reach it from the host."""

    env: dict[str, str]
    repo: Path
    redis_port: int
    flower_port: int

    @property
    def broker_url(self) -> str:
        return f"redis://:{self.env['REDIS_PASSWORD']}@127.0.0.1:{self.redis_port}/0"

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        proc = subprocess.run(
            [*compose_command(), "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"), *args],
            capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=timeout, check=False,
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, f"compose {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).split()

    def exec(self, service: str, *cmd: str) -> str:
        return self.compose("exec", "-T", service, *cmd, timeout=120)

    def host_env(self) -> dict[str, str]:
        """The submitting host's environment: the broker with the compose file's password."""
        env = dict(os.environ)
        env["SAGE_BROKER_URL"] = self.broker_url
        return env

    def sage(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [bin_path("sage-submit"), *args],
            capture_output=True, text=True, env=self.host_env(), timeout=timeout, check=False,
        )  # fmt: skip

    def submit(self, *args: str) -> str:
        """Send a run of the repository's current main (without waiting): its id."""
        proc = self.sage("--repo", str(self.repo), "--repo-url", "/repo", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr + self.logs()
        return proc.stdout.strip().splitlines()[-1]

    def status(self, run_id: str) -> dict[str, Any]:
        """``sage-submit status RUN --json``, its tickets by id."""
        proc = self.sage("status", run_id, "--json", timeout=60)
        assert proc.returncode == 0, proc.stderr
        data: dict[str, Any] = json.loads(proc.stdout)
        data["tickets"] = {row["id"]: row for row in data["tickets"]}
        return data

    def wait_run(self, run_id: str, timeout: float = 600) -> dict[str, Any]:
        """The run's status once it has ended."""
        final: dict[str, Any] = {}

        def ended() -> bool:
            final.update(self.status(run_id))
            return final.get("status") in {"FINISHED", "FAILED"}

        assert wait_until(ended, timeout=timeout, interval=2), f"{final}\n{self.logs()}"
        phases = {tid: row["state"] for tid, row in final["tickets"].items()}
        assert final["status"] == "FINISHED", f"{final}\n{self.logs()}"
        assert set(phases.values()) == {"COMPLETED"}, phases
        return final

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False)[-12000:]

    def set_tickets(self, index: list[dict[str, Any]]) -> None:
        """Commit ``index`` as the ticket index on main, in place (the containers hold the
        folder mounted); everything stays owned by REPO_UID."""
        commit_files(self.repo, "main", {INDEX: index_bytes({"version": "1.0", "tickets": index})})
        chown_tree(self.repo, REPO_UID)


def chown_tree(path: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, uid)
    os.chown(path, uid, uid)


def health(container: str) -> str:
    proc = subprocess.run(
        ["docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
         container],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.stdout.strip()


def wait_healthy(stack: Stack, services: list[str], timeout: float = 600) -> None:
    def all_healthy() -> bool:
        ids = [c for s in services for c in stack.containers(s)]
        return bool(ids) and all(health(c) == "healthy" for c in ids)

    assert wait_until(all_healthy, timeout=timeout, interval=2), stack.logs()


def project_leftovers() -> dict[str, list[str]]:
    """Containers, networks and volumes of the test project that still exist."""
    label = f"label=com.docker.compose.project={PROJECT}"
    found = {}
    for kind, cmd in {
        "containers": ["docker", "ps", "-aq", "--filter", label],
        "networks": ["docker", "network", "ls", "-q", "--filter", label],
        "volumes": ["docker", "volume", "ls", "-q", "--filter", label],
    }.items():
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        found[kind] = out.split()
    return found


@pytest.fixture(scope="module", autouse=True)
def git_reads_any_owners_repository() -> Iterator[None]:
    """The repository belongs to REPO_UID; the host's git (sage-submit's, the tests') reads it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GIT_CONFIG_COUNT", "1")
        mp.setenv("GIT_CONFIG_KEY_0", "safe.directory")
        mp.setenv("GIT_CONFIG_VALUE_0", "*")
        yield


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("compose")
    repo = root / "project.git"
    make_repo(repo, {}, {"version": "1.0", "tickets": []}, bare=True)
    chown_tree(repo, REPO_UID)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "REDIS_PASSWORD": secrets.token_hex(16),
        "FLOWER_BASIC_AUTH": f"admin:{secrets.token_hex(8)}",
        "REPO_PATH": str(repo),
        "REPO_UID": str(REPO_UID),
        "REPO_GID": str(REPO_UID),
        "REDIS_PORT": str(free_port()),
        "FLOWER_PORT": str(free_port()),
        "SAGE_TICKET_TIMEOUT": "20",
        "SAGE_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    }
    stack = Stack(env, repo, int(env["REDIS_PORT"]), int(env["FLOWER_PORT"]))
    stack.compose("down", "-v", "--remove-orphans", check=False)  # a crashed earlier run's
    start = time.monotonic()
    stack.compose("build", timeout=1800)
    size = int(subprocess.check_output(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]))
    note(f"built {IMAGE} in {time.monotonic() - start:.0f}s: {size / 1e6:.0f} MB")
    start = time.monotonic()
    stack.compose("up", "-d")
    try:
        wait_healthy(stack, ["redis", "flower", "commit", "tickets"])
        note(f"the stack is up and healthy in {time.monotonic() - start:.0f}s")
        yield stack
    finally:
        if not os.environ.get("SAGE_COMPOSE_KEEP"):
            stack.compose("down", "-v", "--remove-orphans", timeout=300, check=False)


def layered_graph(levels: int, width: int, run: str | None = None) -> list[dict[str, Any]]:
    """``levels`` x ``width`` tickets; each depends on two of the level before."""
    tickets = []
    for level in range(levels):
        for i in range(width):
            tid = f"L{level}-{i}"
            deps = sorted({f"L{level - 1}-{i}", f"L{level - 1}-{(i + 1) % width}"}) if level else []
            tickets.append(ticket(tid, run or writes(tid, deps), deps))
    return tickets


# -- the tests, in the order a user meets them --------------------------------


def test_every_worker_runs_under_tini_as_a_user_and_the_commit_worker_as_the_repo_owner(
    stack: Stack,
) -> None:
    for service in ["tickets", "commit", "flower"]:
        pid1 = stack.exec(service, "cat", "/proc/1/cmdline").split("\0")[0]
        assert pid1.endswith("tini"), (service, pid1)
    assert stack.exec("tickets", "id", "-u").strip() == "10001"
    assert stack.exec("commit", "id", "-u").strip() == str(REPO_UID)


def test_the_check_from_the_host_with_the_workers_repository_path_is_ready(stack: Stack) -> None:
    stack.set_tickets(layered_graph(1, 2))
    proc = stack.sage(
        "check", "--timeout", "3", "--repo", str(stack.repo), "--repo-url", "/repo", "--json"
    )
    data = json.loads(proc.stdout)
    checks = {c["what"]: c for c in data["checks"]}
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert checks["commit worker"]["ok"] and checks["ticket workers"]["ok"]
    assert "/repo" in checks["repository URL"]["detail"]


def test_a_twenty_ticket_graph_from_the_host_commits_each_ticket_once_in_dependency_order(
    stack: Stack,
) -> None:
    graph = layered_graph(4, 5)
    stack.set_tickets(graph)
    before = {p for p in stack.repo.rglob("*")}
    start = time.monotonic()
    proc = stack.sage(
        "--repo", str(stack.repo), "--repo-url", "/repo", "--parallel", "4", "--wait", "--json"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + stack.logs()
    note(f"20-ticket graph committed through the stack in {time.monotonic() - start:.0f}s")
    summary = json.loads(proc.stdout)
    branch = summary["branch"]
    log = ticket_log(stack.repo, branch)
    assert sorted(log) == sorted(t["id"] for t in graph) and len(log) == 20
    position = {tid: n for n, tid in enumerate(log)}
    for t in graph:
        for dep in t["dependencies"]:
            assert position[dep] < position[t["id"]], (dep, t["id"], log)
    assert set(states(stack.repo, branch).values()) == {"COMPLETED"}
    written = [p for p in stack.repo.rglob("*") if p not in before]
    assert written, "the run wrote nothing into the repository"
    strangers = [str(p) for p in written if p.lstat().st_uid != REPO_UID]
    assert not strangers, strangers


def test_celery_inspect_in_a_container_shows_the_ticket_and_commit_queues(stack: Stack) -> None:
    out = stack.exec("tickets", "celery", "-A", "sage_tasks", "inspect", "active_queues")
    assert "'name': 'tickets'" in out and "'name': 'commit'" in out, out


def flower_get(stack: Stack, path: str, auth: str | None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{stack.flower_port}{path}")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_flower_answers_on_the_loopback_port_with_its_credentials_and_refuses_without(
    stack: Stack,
) -> None:
    auth = stack.env["FLOWER_BASIC_AUTH"]
    assert flower_get(stack, "/api/workers", auth) == 200
    assert flower_get(stack, "/api/workers", None) == 401
    assert flower_get(stack, "/api/workers", "admin:wrong") == 401


def test_three_ticket_containers_share_the_work_of_a_run(stack: Stack) -> None:
    stack.compose("up", "-d", "--scale", "tickets=3")
    wait_healthy(stack, ["tickets"])
    assert len(stack.containers("tickets")) == 3
    stack.set_tickets([ticket(f"W{i:02}", "sleep 2") for i in range(12)])
    final = stack.wait_run(stack.submit())
    hosts = {t["host"] for t in final["tickets"].values()}
    note(f"3 ticket containers: the run's tickets ran on {len(hosts)} hosts")
    assert len(hosts) == 3, hosts


def container_of(stack: Stack, host: str) -> str:
    """The ticket container whose worker has node name ``host`` (``tickets@<hostname>``)."""
    for cid in stack.containers("tickets"):
        name = subprocess.check_output(
            ["docker", "inspect", "-f", "{{.Config.Hostname}}", cid], text=True
        ).strip()
        if host == f"tickets@{name}":
            return cid
    raise AssertionError(f"no ticket container runs {host}")


def test_a_ticket_whose_container_is_killed_mid_ticket_finishes_and_is_committed_once(
    stack: Stack,
) -> None:
    stack.set_tickets([ticket("LONG", "sleep 12 && echo done > long.txt"),
                       *(ticket(f"S{i}", "sleep 1") for i in range(4))])  # fmt: skip
    run_id = stack.submit()
    seen: dict[str, Any] = {}

    def long_running() -> bool:
        seen.update(stack.status(run_id)["tickets"]["LONG"])
        return seen.get("state") == "RUNNING" and bool(seen.get("host"))

    assert wait_until(long_running, timeout=120, interval=1), seen
    killed = container_of(stack, seen["host"])
    subprocess.run(["docker", "kill", killed], check=True, capture_output=True)
    start = time.monotonic()
    note(f"killed {killed[:12]} ({seen['host']}) while it ran LONG")
    final = stack.wait_run(run_id, timeout=VISIBILITY_TIMEOUT + 600)
    note(f"LONG finished {time.monotonic() - start:.0f}s after the kill")
    assert final["tickets"]["LONG"]["attempts"] >= 2, final["tickets"]["LONG"]
    assert ticket_log(stack.repo, final["branch"]).count("LONG") == 1
    stack.compose("up", "-d", "--scale", "tickets=3")  # the killed one back, if it stayed down


def test_a_redis_restart_keeps_the_run_and_it_finishes(stack: Stack) -> None:
    chain = [ticket(f"C{i}", "sleep 2", [f"C{i - 1}"] if i else []) for i in range(6)]
    stack.set_tickets(chain)
    run_id = stack.submit()

    def two_done() -> bool:
        found = stack.status(run_id)["tickets"]
        return bool(sum(t["state"] == "COMPLETED" for t in found.values()) >= 2)

    assert wait_until(two_done, timeout=120, interval=1)
    stack.compose("restart", "redis")
    note("restarted redis mid-run")
    wait_healthy(stack, ["redis"])
    final = stack.wait_run(run_id)
    assert ticket_log(stack.repo, final["branch"]) == [t["id"] for t in chain]


def test_down_v_leaves_no_container_network_or_volume_behind(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans", timeout=300)
    with contextlib.suppress(KeyError):
        del stack.env["SAGE_COMPOSE_KEEP"]
    assert project_leftovers() == {"containers": [], "networks": [], "volumes": []}
