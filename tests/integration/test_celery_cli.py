"""Celery's own command line on sage-tasks: ``celery -A sage_tasks ...`` against real workers.

The package's app is built from the ``SAGE_*`` settings on first use, so
``inspect``, ``status``, ``events`` and ``worker`` work as in any Celery
project; a ``celery -A sage_tasks worker`` serves tickets as
``sage-worker tickets`` does, and refuses a commit queue.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.builders import ticket, writes
from tests.support.fleet import Fleet, graph_runner, unique_queue
from tests.support.gitrepo import make_repo
from tests.support.procs import bin_path, wait_until
from tests.support.redis_server import free_port
from tests.support.runs import ticket_log

pytestmark = pytest.mark.fleet(per_test=True, concurrency=None, password="celery-cli-pw")


def celery(fleet: Fleet, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_path("celery"), "-A", "sage_tasks", *args],
        capture_output=True, text=True, env=fleet.env(), timeout=timeout, check=False,
    )  # fmt: skip


def start_celery_worker(fleet: Fleet, name: str, *args: str) -> subprocess.Popen[bytes]:
    """``celery -A sage_tasks worker ARGS`` as a process of the fleet (stopped with it)."""
    log = open(fleet.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [bin_path("celery"), "-A", "sage_tasks", "worker", *args],
        stdout=log, stderr=subprocess.STDOUT, env=fleet.env(C_FORCE_ROOT="1"),
        start_new_session=True,
    )  # fmt: skip
    log.close()
    fleet.procs[name] = proc
    return proc


def test_importing_the_package_builds_no_app_and_connects_to_nothing() -> None:
    code = (
        "import sys, sage_tasks; "
        "assert 'celery' not in sys.modules and 'redis' not in sys.modules, sorted(sys.modules); "
        "app = sage_tasks.celery; assert app is sage_tasks.celery; "
        "print(app.conf.broker_url, sorted(n for n in app.tasks if n.startswith('sage.')))"
    )
    env = {**os.environ, "SAGE_BROKER_URL": "redis://nowhere.invalid:1/0"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    url, names = proc.stdout.split(" ", 1)
    assert url == "redis://nowhere.invalid:1/0"
    assert "sage.run_ticket" in names and "sage.commit_ticket" in names


def test_inspect_and_status_list_the_sage_workers_and_their_queues(fleet: Fleet) -> None:
    queue = unique_queue()
    fleet.start_tickets("tickets", concurrency=1)
    repo = fleet.root / "repo"
    make_repo(repo, {}, {"version": "1.0", "tickets": []})
    node = fleet.start_commit(repo, queue)
    found: dict[str, list[str]] = {}

    def both_answer() -> bool:
        proc = celery(fleet, "inspect", "active_queues", "--json")
        if proc.returncode != 0:
            return False
        replies = json.loads(proc.stdout)
        found.clear()
        found.update({n: [q["name"] for q in qs] for n, qs in replies.items()})
        return len(found) == 2

    assert wait_until(both_answer, timeout=60, interval=1), fleet.logs()
    by_queue = {q: n for n, qs in found.items() for q in qs}
    assert by_queue["tickets"].startswith("tickets@")
    assert by_queue[queue].startswith(f"{node}@")
    status = celery(fleet, "status")
    assert status.returncode == 0 and "2 nodes online" in status.stdout, status.stdout


def test_a_celery_worker_on_the_ticket_queue_runs_a_graph_as_sage_worker_tickets_does(
    fleet: Fleet, tmp_path: Path
) -> None:
    start_celery_worker(fleet, "celery-tickets", "-Q", "tickets", "-c", "2", "-n", "cli@%h")
    graph = [
        ticket("A", writes("A")),
        ticket("B", writes("B")),
        ticket("C", writes("C", ["A", "B"]), ["A", "B"]),
    ]
    with graph_runner(fleet, tmp_path / "graphs") as run:
        repo, res = run(graph, expect=0)
    assert res.data is not None
    assert ticket_log(repo, res.data["branch"])[-1] == "C"
    assert {t["host"] for t in res.data["tickets"]} == {f"cli@{os.uname().nodename}"}


def test_events_dump_shows_the_task_events_of_a_run(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_tickets("tickets", concurrency=1)
    log = open(tmp_path / "events.log", "wb")  # noqa: SIM115 - owned by the child
    dump = subprocess.Popen(
        [bin_path("celery"), "-A", "sage_tasks", "events", "--dump"],
        stdout=log, stderr=subprocess.STDOUT, env=fleet.env(), start_new_session=True,
    )  # fmt: skip
    log.close()
    try:
        assert wait_until(lambda: b"starting capture" in (tmp_path / "events.log").read_bytes())
        with graph_runner(fleet, tmp_path / "graphs") as run:
            _, res = run([ticket("EV-1", "true")], expect=0)
        assert res.data is not None

        def seen() -> bool:
            text = (tmp_path / "events.log").read_text(errors="replace")
            return "task succeeded" in text and "sage.run_ticket" in text

        assert wait_until(seen, timeout=30), (tmp_path / "events.log").read_text()
        text = (tmp_path / "events.log").read_text(errors="replace")
        assert res.data["run_id"] in text and "EV-1" in text
    finally:
        os.killpg(dump.pid, signal.SIGTERM)
        dump.wait(15)


def test_a_celery_worker_asked_to_serve_the_commit_queue_refuses_in_one_line(
    fleet: Fleet,
) -> None:
    proc = start_celery_worker(fleet, "celery-commit", "-Q", "commit")
    assert proc.wait(60) == 2
    log = fleet.log("celery-commit")
    assert "queue 'commit' is the commit queue" in log and "sage-worker commit --repo" in log
    assert "Traceback" not in log


def test_purge_deletes_the_tickets_waiting_on_the_queue(fleet: Fleet, tmp_path: Path) -> None:
    queue = unique_queue()
    index = {"version": "1.0", "tickets": [ticket("P1", "true"), ticket("P2", "true")]}
    repo = make_repo(tmp_path / "repo", {}, index)
    fleet.start_commit(repo, queue)  # prepares the run; no ticket worker takes its tickets
    fleet.launch(repo, queue)
    assert wait_until(lambda: fleet.redis.client().llen("tickets") == 2, timeout=60), fleet.logs()
    proc = celery(fleet, "purge", "-f", "-Q", "tickets")
    assert proc.returncode == 0, proc.stderr
    assert "Purged 2 messages" in proc.stdout, proc.stdout
    assert fleet.redis.client().llen("tickets") == 0


def test_celery_flower_on_the_package_shows_the_sage_workers(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_tickets("tickets", concurrency=1)
    port = free_port()
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [bin_path("celery"), "-A", "sage_tasks", "flower", f"--port={port}",
         "--address=127.0.0.1", "--basic-auth=admin:flower-pw"],
        stdout=log, stderr=subprocess.STDOUT, env=fleet.env(), start_new_session=True,
    )  # fmt: skip
    log.close()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers?refresh=1")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"admin:flower-pw").decode())

    def lists_the_worker() -> bool:
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return any(n.startswith("tickets@") for n in json.loads(resp.read()))
        except OSError:
            return False

    try:
        assert wait_until(lists_the_worker, timeout=60, interval=1), (
            tmp_path / "flower.log"
        ).read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
