"""``sage-worker flower`` and ``make flower`` on real processes: credentials, loopback, what
each task shows (ticket id, run id, worker, state, runtime, retries, queue), metrics, TLS."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery
import pytest

from tests.support.builders import ticket
from tests.support.fleet import Fleet, fleet_on, private_fleet, unique_queue
from tests.support.gitrepo import make_repo
from tests.support.net import get, listening
from tests.support.procs import BIN, bin_path, wait_until
from tests.support.redis_server import RedisServer, free_port
from tests.support.tls import TlsRedisServer, make_certs

BROKER_PASSWORD = "broker-pw-91d2"
FLOWER_USER, FLOWER_PASSWORD = "admin", "flower-pw-3b7e"
AUTH = f"{FLOWER_USER}:{FLOWER_PASSWORD}"
ROOT = Path(__file__).resolve().parents[2]
TICKETS_NODE = f"tickets@{socket.gethostname()}"
#: a command that fails after writing far more output than Celery keeps of a task's arguments
LOUD_FAILURE = "head -c 6000 /dev/zero | tr '\\0' x; exit 1"

#: the fleet of ``monitored``: a broker with a password, no ticket worker before Flower
pytestmark = pytest.mark.fleet(concurrency=None, password=BROKER_PASSWORD)


@dataclass
class Monitored:
    fleet: Fleet
    port: int
    run: dict[str, Any]
    queue: str


@pytest.fixture(scope="module")
def monitored(shared_fleet: Fleet) -> Monitored:
    """Flower with credentials beside a fleet that has finished one run."""
    port = free_port()
    shared_fleet.start(
        "flower",
        "flower",
        f"--port={port}",
        FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{FLOWER_PASSWORD}",
    )
    shared_fleet.start_tickets("tickets", concurrency=1)
    repo = make_repo(
        shared_fleet.root / "repo",
        {},
        {
            "version": "1.0",
            "tickets": [ticket("FLW-1", "echo one > one.txt"), ticket("FLW-2", LOUD_FAILURE)],
        },
        bare=True,
    )
    queue = unique_queue()
    shared_fleet.start_commit(repo, queue)
    assert wait_until(lambda: get(port, "/")[0] is not None, 30), shared_fleet.log("flower")
    res = shared_fleet.submit(repo, "--wait", "--json", queue=queue)
    assert res.code == 1 and res.data is not None, res.stderr + shared_fleet.logs()
    assert res.data["completed"] == ["FLW-1"] and list(res.data["deferred"]) == ["FLW-2"]
    return Monitored(shared_fleet, port, res.data, queue)


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

    assert wait_until(shown, 60), seen
    assert seen["sage.run_ticket"] == repr((run_id, "FLW-1"))


def tasks_of(monitored: Monitored, ticket_id: str) -> dict[str, dict[str, Any]]:
    """Task name -> Flower's record of it, for the tasks of one ticket of the run (once done)."""
    run_id = monitored.run["run_id"]
    found: dict[str, dict[str, Any]] = {}

    def complete() -> bool:
        status, body = get(monitored.port, "/api/tasks", AUTH)
        if status != 200:
            return False
        for task in json.loads(body).values():
            args = str(task.get("args"))
            if f"'{run_id}', '{ticket_id}')" in args and task.get("state") == "SUCCESS":
                found[task["name"]] = task
        return {"sage.run_ticket", "sage.commit_ticket"} <= set(found)

    assert wait_until(complete, 60), found
    return found


@pytest.mark.parametrize("ticket_id", ["FLW-1", "FLW-2"])
def test_each_task_shows_its_worker_state_runtime_retries_and_queue(
    monitored: Monitored, ticket_id: str
) -> None:
    tasks = tasks_of(monitored, ticket_id)
    run, commit = tasks["sage.run_ticket"], tasks["sage.commit_ticket"]
    assert run["worker"] == TICKETS_NODE
    assert commit["worker"] == f"commit-{monitored.queue}@{socket.gethostname()}"
    for task in (run, commit):
        assert task["state"] == "SUCCESS" and task["retries"] == 0
        assert task["runtime"] > 0 and task["received"] and task["started"]
    assert run["routing_key"] == "tickets"  # the tickets queue
    assert commit["routing_key"] == monitored.queue  # the repository's commit queue
    assert commit["args"].startswith(f"({{'ticket': '{ticket_id}', 'outcome': ")


def test_a_long_outcome_never_hides_the_run_id_and_ticket_id_of_a_commit_task(
    monitored: Monitored,
) -> None:
    commit = tasks_of(monitored, "FLW-2")["sage.commit_ticket"]
    args = commit["args"]
    assert len(args) <= 1024
    assert args.endswith(f", '{monitored.run['run_id']}', 'FLW-2')"), args
    assert "'outcome': 'failed'" in args and "chars)" in args  # the output, cut


def test_the_tickets_queue_and_the_commit_queue_appear_by_name(monitored: Monitored) -> None:
    names: set[str] = set()

    def listed() -> bool:
        # Flower lists the queues of the workers it knows; a refresh asks every worker
        get(monitored.port, "/api/workers?refresh=1", AUTH)
        status, body = get(monitored.port, "/api/queues/length", AUTH)
        assert status == 200, body
        names.update(q["name"] for q in json.loads(body)["active_queues"])
        return {"tickets", monitored.queue} <= names

    assert wait_until(listed, 30, 1.0), names


def test_metrics_are_served_in_the_prometheus_text_format(monitored: Monitored) -> None:
    tasks_of(monitored, "FLW-1")
    status, body = get(monitored.port, "/metrics", AUTH)
    assert status == 200
    text = body.decode()
    assert "# TYPE flower_events_total counter" in text
    succeeded = re.compile(
        r'^flower_events_total\{task="sage\.run_ticket",type="task-succeeded",'
        rf'worker="{re.escape(TICKETS_NODE)}"\}} [1-9]',
        re.M,
    )
    assert succeeded.search(text), text[:3000]
    assert re.search(
        r'^flower_task_runtime_seconds_bucket\{.*task="sage\.commit_ticket"', text, re.M
    )
    assert get(monitored.port, "/metrics")[0] == 200  # scrapers need no credentials


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
    port = free_port()
    with private_fleet(tmp_path, concurrency=None) as fleet:
        fleet.start("flower", "flower", f"--port={port}", "--no-auth")
        assert wait_until(lambda: get(port, "/")[0] == 200, 30), fleet.log("flower")
        assert listening(port) == ["0100007F"]


def test_flower_checks_a_tls_brokers_certificate_as_the_workers_do(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    server = TlsRedisServer(tmp_path / "redis", certs)
    server.start()
    bare = f"rediss://127.0.0.1:{server.port}/0"  # no TLS options: certificates are checked
    auth = f"{FLOWER_USER}:{FLOWER_PASSWORD}"
    with fleet_on(server, tmp_path) as fleet:
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


def test_make_flower_starts_flower_for_the_workers_broker_behind_the_environments_credentials(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", password=BROKER_PASSWORD)
    server.start()
    port = free_port()
    venv = Path(sys.prefix)
    env = {
        **os.environ,
        "SAGE_BROKER_URL": server.url,
        "FLOWER_BASIC_AUTH": AUTH,
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "make-flower.log"
    with log_path.open("wb") as log:
        # -o: the venv the tests run in is installed; make must not reinstall it
        proc = subprocess.Popen(
            [
                "make",
                "-s",
                "-o",
                f"{venv}/.installed",
                "flower",
                f"VENV={venv}",
                f"FLOWER_PORT={port}",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert wait_until(lambda: get(port, "/api/workers")[0] == 401, 40), log_path.read_text()
        assert get(port, "/api/workers", AUTH)[0] == 200
        assert listening(port) == ["0100007F"]
        out = log_path.read_text()
        assert f"starting Flower on 127.0.0.1:{port} for redis://" in out
        assert wait_until(lambda: "Connected to redis://" in log_path.read_text(), 30), out
        assert BROKER_PASSWORD not in log_path.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        server.stop(kill=True)


def system_python_env(path: str) -> tuple[list[str], dict[str, str]]:
    """Run ``sage-worker flower`` as a system Python would: the interpreter in one folder
    (the base interpreter, no ``celery`` beside it), the package on ``PYTHONPATH``."""
    base = Path(sys.base_prefix) / "bin" / "python3"
    assert not (base.parent / "celery").exists(), f"{base.parent} holds a celery script"
    site = Path(celery.__file__).parents[1]  # the venv's site-packages
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PATH=path, PYTHONPATH=f"{ROOT}:{site}", FLOWER_BASIC_AUTH=AUTH)
    return [str(base), "-m", "sage_tasks.cli.worker", "flower"], env


def test_flower_finds_celery_on_the_path_when_it_is_not_beside_the_interpreter(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    port = free_port()
    cmd, env = system_python_env(f"{BIN}:/usr/bin:/bin")
    env["SAGE_BROKER_URL"] = server.url
    with (tmp_path / "flower.log").open("wb") as log:
        proc = subprocess.Popen(
            [*cmd, f"--port={port}"], stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    try:
        assert wait_until(lambda: get(port, "/", AUTH)[0] == 200, 60), (
            tmp_path / "flower.log"
        ).read_text()
        assert get(port, "/")[0] == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        server.stop(kill=True)


def test_flower_without_a_celery_script_anywhere_says_so_in_one_line() -> None:
    system_path = "/usr/bin:/bin"  # git, but no celery
    assert shutil.which("celery", path=system_path) is None
    cmd, env = system_python_env(system_path)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "no 'celery' script beside" in lines[0] and "on PATH" in lines[0]
