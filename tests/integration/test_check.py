"""``sage-submit check``: the prerequisites of a run, each problem in one line, exit 0 or 3."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.builders import ticket
from tests.support.fleet import Fleet, unique_queue
from tests.support.gitrepo import make_repo
from tests.support.procs import bin_path, wait_until
from tests.support.redis_server import free_port

pytestmark = pytest.mark.fleet(per_test=True, concurrency=None)


#: a loaded machine's workers may answer after the default second: the checks, not the
#: answer time, are under test
WAIT = ("--timeout", "3")


def check(
    fleet: Fleet, *args: str, broker: str | None = None
) -> tuple[int, dict[str, dict[str, Any]]]:
    env = fleet.env() if broker is None else fleet.env(SAGE_BROKER_URL=broker)
    proc = subprocess.run([bin_path("sage-submit"), "check", "--json", *WAIT, *args],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ready"] == (proc.returncode == 0)
    return proc.returncode, {c["what"]: c for c in data["checks"]}


def repo_with_tickets(tmp_path: Path) -> Path:
    tickets = [ticket("A", "true"), ticket("B", "true"), ticket("C", "true", ["A", "B"])]
    return make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": tickets})


def wait_ready(fleet: Fleet, *args: str) -> None:
    """Until ``check ARGS`` passes: the workers just started answer."""
    assert wait_until(lambda: check(fleet, *args)[0] == 0, timeout=60, interval=1), fleet.logs()


def serve(fleet: Fleet, tmp_path: Path) -> tuple[str, tuple[str, ...]]:
    """A ticket worker and a commit worker for a repository of three tickets, once ``check``
    sees them: the commit queue, and the arguments ``check`` was given."""
    repo = repo_with_tickets(tmp_path)
    queue = unique_queue()
    fleet.start_tickets("tickets", concurrency=1)
    fleet.start_commit(repo, queue)
    args = ("--repo", str(repo), "--commit-queue", queue)
    wait_ready(fleet, *args)
    return queue, args


def test_a_fleet_with_a_ticket_worker_and_one_commit_worker_is_ready(
    fleet: Fleet, tmp_path: Path
) -> None:
    queue, args = serve(fleet, tmp_path)
    code, checks = check(fleet, *args)
    assert code == 0
    assert checks["commit worker"]["ok"] and queue in checks["commit worker"]["detail"]
    assert checks["ticket workers"]["ok"]
    assert checks["git"]["ok"] and checks["repository URL"]["ok"]
    assert "3 tickets" in checks["ticket index"]["detail"]
    assert "67%" in checks["parallelism"]["detail"]  # A and B of A, B, C can start at once


def test_no_commit_worker_and_no_ticket_worker_is_not_ready(fleet: Fleet, tmp_path: Path) -> None:
    repo = repo_with_tickets(tmp_path)
    code, checks = check(fleet, "--repo", str(repo), "--commit-queue", unique_queue())
    assert code == 3
    assert (
        not checks["commit worker"]["ok"]
        and "sage-worker commit" in checks["commit worker"]["detail"]
    )
    assert not checks["ticket workers"]["ok"]


def test_two_commit_workers_on_one_queue_are_reported(fleet: Fleet, tmp_path: Path) -> None:
    repo = repo_with_tickets(tmp_path)
    queue = unique_queue()
    fleet.start_tickets("tickets", concurrency=1)
    fleet.start_commit(repo, queue, name="commit-a")
    fleet.start_commit(repo, queue, name="commit-b")

    def two() -> bool:
        return "2 workers" in check(fleet, "--commit-queue", queue)[1]["commit worker"]["detail"]

    assert wait_until(two, timeout=60, interval=1), fleet.logs()
    code, checks = check(fleet, "--commit-queue", queue)
    assert code == 3 and "exactly one" in checks["commit worker"]["detail"]


def test_an_unreachable_broker_and_an_unreadable_url_are_each_one_finding(
    fleet: Fleet, tmp_path: Path
) -> None:
    repo = repo_with_tickets(tmp_path)
    broker = f"redis://:secret@127.0.0.1:{free_port()}/0"
    url = f"git://127.0.0.1:{free_port()}/nowhere.git"
    code, checks = check(fleet, "--repo", str(repo), "--repo-url", url, broker=broker)
    assert code == 3
    assert not checks["broker"]["ok"] and "secret" not in checks["broker"]["detail"]
    assert not checks["repository URL"]["ok"]


def test_a_path_the_workers_read_the_repository_at_is_not_looked_up_on_this_host(
    fleet: Fleet, tmp_path: Path
) -> None:
    repo = repo_with_tickets(tmp_path)
    queue = unique_queue()
    fleet.start_tickets("tickets", concurrency=1)
    # the commit worker knows the repository by the name the workers use, as in a container
    fleet.start(
        "commit", "commit", "--repo", str(repo), "--repo-url", "/repo", "--commit-queue", queue
    )
    args = ["--repo", str(repo), "--repo-url", "/repo", "--commit-queue", queue]
    wait_ready(fleet, *args)
    _, checks = check(fleet, *args)
    finding = checks["repository URL"]
    assert finding["info"] and "/repo is a path on the workers' hosts" in finding["detail"]
    for local_name in (str(tmp_path / "nowhere"), f"file://{tmp_path}/nowhere"):
        _, checks = check(fleet, "--repo", str(repo), "--repo-url", local_name)
        assert checks["repository URL"]["info"], local_name


def test_heartbeat_and_visibility_settings_that_slow_or_race_recovery_are_warnings_not_failures(
    fleet: Fleet, tmp_path: Path
) -> None:
    _, args = serve(fleet, tmp_path)
    _, fine = check(fleet, *args)
    assert fine["heartbeat timeout"]["ok"] and not fine["heartbeat timeout"]["warning"]
    assert "visibility timeout" not in fine

    risky = fleet.env(
        SAGE_HEARTBEAT_INTERVAL="5",
        SAGE_HEARTBEAT_TIMEOUT="400",
        SAGE_TICKET_TIMEOUT="600",
        SAGE_VISIBILITY_TIMEOUT="300",
    )
    proc = subprocess.run([bin_path("sage-submit"), "check", *WAIT, *args], capture_output=True,
                          text=True, env=risky, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr  # warnings do not fail the check
    line = next(ln for ln in proc.stdout.splitlines() if "visibility timeout:" in ln)
    assert line.lstrip().startswith("warn") and "SAGE_VISIBILITY_TIMEOUT=300 s" in line

    tight = fleet.env(SAGE_HEARTBEAT_INTERVAL="5", SAGE_HEARTBEAT_TIMEOUT="8")
    proc = subprocess.run([bin_path("sage-submit"), "check", "--json", *WAIT, *args],
                          capture_output=True, text=True, env=tight, timeout=60)  # fmt: skip
    found = {c["what"]: c for c in json.loads(proc.stdout)["checks"]}
    beat = found["heartbeat timeout"]
    assert beat["warning"] and not beat["ok"] and "SAGE_HEARTBEAT_TIMEOUT=8 s" in beat["detail"]
    assert proc.returncode == 0


def test_a_timeout_that_is_not_a_positive_number_is_refused_before_anything_is_asked() -> None:
    for bad in ("0", "-1", "soon"):
        proc = subprocess.run([bin_path("sage-submit"), "check", "--timeout", bad],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 2, (bad, proc.stdout, proc.stderr)
        assert "--timeout" in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stdout == ""
