"""``sage-submit --local``: a private Redis and workers, stopped afterwards, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.gitrepo import make_repo

BIN = Path(sys.executable).parent


def index(*tickets: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1.0", "tickets": list(tickets)}


def ticket(tid: str, run: str, deps: list[str] | None = None) -> dict[str, Any]:
    return {"id": tid, "title": tid, "dependencies": deps or [], "run": run}


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line or environment names ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(entry.name))
    return found


def local_dirs(tmp: Path) -> set[str]:
    return {p.name for p in tmp.glob("sage-local-*")}


def submit_local(repo: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "sage-submit"), "--repo", str(repo), "--local", "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip


def test_a_local_run_completes_and_leaves_no_process_or_file_behind(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {},
        index(ticket("A", "echo a > a.txt"), ticket("B", "test -f a.txt && echo b > b.txt", ["A"])),
    )
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = submit_local(repo, env, "--parallel", "2")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    data = json.loads(out)
    assert data["completed"] == ["A", "B"]
    assert local_dirs(tmpdir) == set()
    assert processes_mentioning(str(tmpdir)) == []


def test_local_falls_back_to_the_packaged_redis_server_when_the_system_has_none(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", {}, index(ticket("A", "echo a > a.txt")))
    only_git = tmp_path / "bin"
    only_git.mkdir()
    (only_git / "git").symlink_to(
        subprocess.run(
            ["sh", "-c", "command -v git"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    env = {**os.environ, "PATH": f"{BIN}:{only_git}"}
    proc = submit_local(repo, env)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert json.loads(out)["completed"] == ["A"]


def test_ctrl_c_stops_every_process_local_started_and_removes_its_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {}, index(ticket("SLOW", "sleep 60")))
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = submit_local(repo, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the ticket's command runs
        if any(
            b"sleep\x0060" in Path(f"/proc/{p}/cmdline").read_bytes()
            for p in processes_mentioning(str(tmpdir))
            if Path(f"/proc/{p}").exists()
        ):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("the ticket never started")
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert local_dirs(tmpdir) == set()
    time.sleep(0.5)
    assert processes_mentioning(str(tmpdir)) == []
