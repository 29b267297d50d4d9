"""``sage-submit --local``: the repository's private Redis, kept on disk, and workers stopped
afterwards; ``status``/``report --local`` read its history; nothing left running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.browser import dump_dom
from tests.support.builders import index, ticket
from tests.support.gitrepo import git, make_repo
from tests.support.net import get, listening
from tests.support.procs import BIN, bin_path, wait_until
from tests.support.redis_server import RedisServer, free_port

#: the line ``--flower`` prints once
FLOWER_LINE = re.compile(r"Flower: (http://127\.0\.0\.1:(\d+)/)\s+user (\S+)\s+password (\S+)")


def gated(tid: str, gate: Path) -> dict[str, Any]:
    """A ticket that runs until ``gate`` exists, then writes a file."""
    return ticket(tid, f"while [ ! -e {gate} ]; do sleep 0.1; done; echo {tid} > {tid}.txt")


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line or environment names ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            if (entry / "stat").read_text().rpartition(")")[2].split()[0] == "Z":
                continue  # a zombie runs nothing; its parent reaps it
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> bytes:
    """The command line of ``pid`` (empty once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def local_dirs(tmp: Path) -> set[str]:
    return {p.name for p in tmp.glob("sage-local-*")}


@dataclass
class Place:
    """Where a test's local commands keep things: temp folders and the ``--local`` data."""

    root: Path

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def workdir(self) -> Path:
        return self.root / "work"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TMPDIR": str(self.tmp),
            "SAGE_WORKDIR": str(self.workdir),
            "COLUMNS": "200",
        }

    def home(self) -> Path:
        """The one repository's ``--local`` folder."""
        (home,) = (self.workdir / "local").iterdir()
        return home

    def server(self) -> dict[str, Any]:
        """What ``server.json`` says about the private Redis running now."""
        data: dict[str, Any] = json.loads((self.home() / "server.json").read_text())
        return data

    def assert_nothing_left(self) -> None:
        """No process, no run or temp folder, no server record: only the data stays."""
        assert wait_until(lambda: processes_mentioning(str(self.root)) == [], 15), (
            processes_mentioning(str(self.root))
        )
        assert local_dirs(self.tmp) == set()
        for home in (self.workdir / "local").glob("*"):
            assert not (home / "server.json").exists() and not (home / "run").exists()


def place(root: Path) -> Place:
    found = Place(root)
    found.tmp.mkdir(parents=True, exist_ok=True)
    return found


def submit_local(repo: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [bin_path("sage-submit"), "--repo", str(repo), "--local", "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip


def sage(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_path("sage-submit"), *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False,
    )  # fmt: skip


def status_json(p: Place, repo: Path, *args: str) -> dict[str, Any]:
    done = sage(p.env, "status", *args, "--local", "--repo", str(repo), "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def bars(page: Path) -> set[str]:
    """The tickets with a bar in the report's timeline, as Chromium built the page."""
    dom = dump_dom(page)
    timeline = dom.split('id="timeline"', 1)[1].split("</section>", 1)[0]
    return set(re.findall(r'<rect [^>]*data-ticket="([^"]+)"', timeline))


# -- a finished run, read again ---------------------------------------------------------


@dataclass
class Finished:
    place: Place
    repo: Path
    run_id: str
    summary: dict[str, Any]
    stderr: str
    report: Path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """A ``--local --report`` run that ended with a COMPLETED chain and a DEFERRED ticket."""
    p = place(tmp_path_factory.mktemp("history"))
    repo = make_repo(
        p.root / "repo",
        {},
        index(
            ticket("A", "echo a > a.txt"),
            ticket("B", "test -f a.txt && echo b > b.txt", ["A"]),
            ticket("C", "echo broken; exit 3"),
        ),
    )
    report = p.root / "out" / "run.html"
    proc = submit_local(repo, p.env, "--parallel", "2", "--report", str(report))
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    summary = json.loads(out)
    assert summary["completed"] == ["A", "B"] and list(summary["deferred"]) == ["C"]
    return Finished(p, repo, summary["run_id"], summary, err, report)


def test_a_local_run_leaves_its_data_and_no_process_or_temp_folder_behind(
    finished: Finished,
) -> None:
    p = finished.place
    p.assert_nothing_left()
    home = p.home()
    assert home.parent == p.workdir / "local"
    assert (home / "redis" / "appendonlydir").is_dir()  # the data, as an append-only file
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "redis" / "redis.conf").stat().st_mode & 0o777 == 0o600
    assert f"sage-submit status {finished.run_id} --local --repo {finished.repo}" in finished.stderr


def test_status_local_reads_the_finished_run_then_stops_its_redis(finished: Finished) -> None:
    p = finished.place
    data = status_json(p, finished.repo, finished.run_id)
    assert data["run_id"] == finished.run_id and data["status"] == "FINISHED"
    assert data["completed"] == ["A", "B"] and "exit code 3" in data["deferred"]["C"]
    assert data["head"] == finished.summary["head"]
    p.assert_nothing_left()
    # from inside the repository, without --repo and without a run id: the latest local run
    inside = sage(p.env, "status", "--local", "--json", cwd=finished.repo)
    assert inside.returncode == 0, inside.stderr
    assert finished.run_id in [r["run_id"] for r in json.loads(inside.stdout)["runs"]]
    p.assert_nothing_left()


def test_report_local_opens_in_chromium_with_a_bar_per_ticket_that_ran(
    finished: Finished, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    made = sage(
        finished.place.env,
        "report", finished.run_id, "--html", str(page), "--local", "--repo", str(finished.repo),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(page)
    assert bars(page) == {"A", "B", "C"}
    finished.place.assert_nothing_left()


def test_the_report_flag_writes_the_report_when_the_run_ends(finished: Finished) -> None:
    assert f"report: {finished.report}" in finished.stderr
    page = finished.report.read_text()
    assert finished.run_id in page
    assert set(re.findall(r'data-ticket="([^"]+)"', page)) == {"A", "B", "C"}


def test_without_local_a_local_run_is_unknown_and_the_error_says_to_add_local(
    finished: Finished, redis_server: RedisServer, tmp_path: Path
) -> None:
    env, repo = finished.place.env, str(finished.repo)
    hint = f"it is a --local run of {repo}: add --local --repo {repo}"
    page = str(tmp_path / "r.html")
    for args in (
        ("status", finished.run_id, "--broker", redis_server.url),
        ("report", finished.run_id, "--html", page, "--broker", redis_server.url),
        ("status", finished.run_id, "--broker", f"redis://127.0.0.1:{free_port()}/0"),
    ):
        done = sage(env, *args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sage: error: "), done.stderr
        assert hint in lines[0], lines[0]
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "r.html").exists()
    unknown = sage(env, "status", "0123456789ab", "--broker", redis_server.url)
    assert unknown.returncode == 2 and "--local" not in unknown.stderr, unknown.stderr
    finished.place.assert_nothing_left()


def test_a_later_local_run_reuses_the_data_so_status_lists_both_runs(finished: Finished) -> None:
    p = finished.place
    again = submit_local(finished.repo, p.env, "--retry-deferred")
    out, err = again.communicate(timeout=240)
    assert again.returncode == 1, err  # C fails again
    later = json.loads(out)["run_id"]
    runs = [r["run_id"] for r in status_json(p, finished.repo)["runs"]]
    assert runs[:1] == [later] and finished.run_id in runs
    p.assert_nothing_left()


# -- rejected before anything runs ------------------------------------------------------


def heads(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname)", "refs/heads").split()


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one ``sage: error:`` line a rejected command prints (exit 2, no traceback)."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sage: error: "), done.stderr
    return lines[0]


def test_a_sha256_repository_runs_under_local_each_ticket_committed_once(tmp_path: Path) -> None:
    """A repository made with ``git init --object-format=sha256``: its tickets run in
    worktrees of a SHA-256 mirror and commit on the run's branch."""
    p = place(tmp_path)
    repo = make_repo(
        tmp_path / "repo",
        {"a.txt": "a\n"},
        index(ticket("A", "echo b > b.txt"), ticket("B", "test -f b.txt && echo c > c.txt", ["A"])),
        object_format="sha256",
    )
    proc = submit_local(repo, p.env, "--parallel", "2")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["completed"] == ["A", "B"], summary
    branch = summary["branch"]
    log = git(repo, "log", "--format=%H %s", f"main..{branch}").splitlines()
    assert [line.split(" ", 1)[1].split(":")[0] for line in log] == ["B", "A"]
    assert all(len(line.split(" ", 1)[0]) == 64 for line in log)
    assert git(repo, "show", f"{branch}:c.txt") == "c\n"
    p.assert_nothing_left()


def test_an_invalid_index_under_local_is_one_line_exit_2_and_leaves_nothing_not_even_a_folder(
    tmp_path: Path,
) -> None:
    p = place(tmp_path)
    repo = make_repo(tmp_path / "repo", {}, index(ticket("A", "true", ["NOPE"])))
    done = sage(p.env, "--repo", str(repo), "--local")
    assert "NOPE" in one_error_line(done)
    assert "submitted run" not in done.stdout
    p.assert_nothing_left()
    assert not p.workdir.exists()  # the data folder made for the run is gone with it
    assert heads(repo) == ["refs/heads/main"]
    # bad options are told the same way
    for args in (("--base", "nope"), ("--index", "/etc/passwd"), ("--branch", "main")):
        one_error_line(sage(p.env, "--repo", str(repo), "--local", *args))
    p.assert_nothing_left()
    assert not p.workdir.exists()


def test_a_rejected_index_keeps_the_data_of_the_runs_before(finished: Finished) -> None:
    p = finished.place
    done = sage(p.env, "--repo", str(finished.repo), "--local", "--index", "none.json")
    assert "no ticket index" in one_error_line(done)
    p.assert_nothing_left()
    runs = [r["run_id"] for r in status_json(p, finished.repo)["runs"]]
    assert finished.run_id in runs
    p.assert_nothing_left()


def test_an_invalid_index_is_told_at_once_while_another_local_run_holds_the_repository(
    tmp_path: Path,
) -> None:
    p = place(tmp_path)
    repo, gate, first = gated_run(p, tmp_path)
    try:
        # told without waiting for the first run, which the gate holds until the end
        done = sage(p.env, "--repo", str(repo), "--local", "--index", "none.json")
        assert "no ticket index" in one_error_line(done)
        assert "waiting" not in done.stdout
        assert latest(p, repo).get("running") == ["G"]
    finally:
        gate.touch()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert json.loads(out)["completed"] == ["G"]
    p.assert_nothing_left()


def test_sigterm_while_the_index_is_read_stops_the_workers_already_booting_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    p = place(tmp_path)
    # big enough that reading and planning it outlasts the workers' start by far
    many = [ticket(f"T{i:05d}", "true", [f"T{i - 1:05d}"] if i % 50 else []) for i in range(50_000)]
    repo = make_repo(tmp_path / "repo", {}, index(*many))
    proc = submit_local(repo, p.env)

    def workers_booting() -> bool:
        return any(b"sage-worker" in cmdline(pid) for pid in processes_mentioning(str(p.workdir)))

    assert wait_until(workers_booting, 60, 0.02), proc.stderr
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["sage: error: interrupted"], err
    assert out == ""  # nothing was submitted
    p.assert_nothing_left()
    assert not p.workdir.exists()
    assert heads(repo) == ["refs/heads/main"]


# -- interrupted, killed, concurrent ----------------------------------------------------


def wait_for_sleep_60(p: Place, proc: subprocess.Popen[str]) -> None:
    """Wait until a local run's ``sleep 60`` ticket command runs."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if any(
            b"sleep\x0060" in Path(f"/proc/{pid}/cmdline").read_bytes()
            for pid in processes_mentioning(str(p.tmp))
            if Path(f"/proc/{pid}").exists()
        ):
            return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the ticket never started")


def test_ctrl_c_stops_every_process_and_the_run_is_kept_as_failed(tmp_path: Path) -> None:
    p = place(tmp_path)
    repo = make_repo(tmp_path / "repo", {}, index(ticket("SLOW", "sleep 60")))
    proc = submit_local(repo, p.env)
    wait_for_sleep_60(p, proc)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    # its workers stop with it: the run does not go on, and nobody is told it does
    assert "it goes on" not in err
    p.assert_nothing_left()
    data = status_json(p, repo)
    assert data["status"] == "FAILED"
    assert "stopped before the run ended" in data["error"]
    assert f"--branch sage/run-{data['run_id']}" in data["error"]
    p.assert_nothing_left()


def test_a_killed_local_run_is_cleaned_up_by_the_next_one_on_the_repository(
    tmp_path: Path,
) -> None:
    p = place(tmp_path)
    repo, gate, first = gated_run(p, tmp_path)
    first_id = latest(p, repo)["run_id"]
    os.killpg(first.pid, signal.SIGKILL)  # no cleanup at all: Redis and workers stay
    first.wait(10)
    orphans = processes_mentioning(str(p.root))
    assert orphans, "a SIGKILLed sage-submit left nothing running"
    server = p.server()
    # a stale record that points nowhere: the Redis on the data is found anyway
    (p.home() / "server.json").write_text(json.dumps({**server, "pid": 999999, "port": 1}))
    second = submit_local(repo, p.env, "--branch", "sage/second")

    def second_runs() -> bool:
        now = latest(p, repo)
        return now.get("run_id") not in (None, first_id) and now.get("running") == ["G"]

    try:
        assert wait_until(second_runs, 120), latest(p, repo)
    finally:
        gate.touch()
    out, err = second.communicate(timeout=240)
    assert second.returncode == 0, err
    assert json.loads(out)["completed"] == ["G"]
    assert "left by a killed sage-submit" in err
    p.assert_nothing_left()
    assert listening(server["port"]) == []
    runs = {r["run_id"]: r["status"] for r in status_json(p, repo)["runs"]}
    assert sorted(runs.values()) == ["FAILED", "FINISHED"]


def gated_run(p: Place, tmp_path: Path) -> tuple[Path, Path, subprocess.Popen[str]]:
    """A ``--local`` run of one ticket, G, that waits for its gate: (repo, gate, the
    ``sage-submit`` process), once G runs."""
    gate = tmp_path / "gate"
    repo = make_repo(tmp_path / "repo", {}, index(gated("G", gate)))
    proc = submit_local(repo, p.env)
    assert wait_until(lambda: latest(p, repo).get("running") == ["G"], 90), proc.stderr
    return repo, gate, proc


def latest(p: Place, repo: Path) -> dict[str, Any]:
    """``status --local --json`` of the latest run ({} while there is none)."""
    done = sage(p.env, "status", "--local", "--repo", str(repo), "--json")
    data: dict[str, Any] = json.loads(done.stdout) if done.returncode == 0 else {}
    return data


def test_two_local_runs_at_once_on_one_repository_both_complete_one_after_the_other(
    tmp_path: Path,
) -> None:
    p = place(tmp_path)
    repo = make_repo(
        tmp_path / "repo",
        {},
        index(ticket("X", "sleep 1; echo x > x.txt"), ticket("Y", "sleep 1; echo y > y.txt")),
    )
    procs = [submit_local(repo, p.env), submit_local(repo, p.env)]
    results = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    summaries = [json.loads(out) for out, _ in results]
    assert all(s["completed"] == ["X", "Y"] for s in summaries)
    assert len({s["run_id"] for s in summaries}) == 2
    waited = [err for _, err in results if "another --local run on" in err]
    assert len(waited) == 1, [err for _, err in results]
    runs = status_json(p, repo)["runs"]
    assert {r["run_id"] for r in runs} == {s["run_id"] for s in summaries}
    assert {r["status"] for r in runs} == {"FINISHED"}
    p.assert_nothing_left()


# -- during a run: Flower, status, the private Redis's doors -------------------------------


def test_flower_and_status_answer_during_a_local_run_behind_its_doors_and_go_with_it(
    tmp_path: Path,
) -> None:
    p = place(tmp_path)
    gate = tmp_path / "gate"
    repo = make_repo(tmp_path / "repo", {}, index(gated("W", gate)))
    port = free_port()
    proc = subprocess.Popen(
        [bin_path("sage-submit"), "--repo", str(repo), "--local", "--flower", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=p.env,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    printed: list[str] = []
    try:
        for line in proc.stdout:  # the Flower line comes before the run is submitted
            printed.append(line)
            if FLOWER_LINE.search(line):
                break
        found = FLOWER_LINE.search("".join(printed))
        assert found, "".join(printed)
        assert found.group(1) == f"http://127.0.0.1:{port}/"
        user, password = found.group(3), found.group(4)
        auth = f"{user}:{password}"
        for path in ("/", "/api/workers", "/api/tasks"):
            assert get(port, path)[0] == 401, path
            assert get(port, path, f"{user}:wrong")[0] == 401, path
            assert get(port, path, auth)[0] == 200, path
        assert listening(port) == ["0100007F"]  # 127.0.0.1 only

        def sees_the_run() -> bool:
            status, body = get(port, "/api/tasks", auth)
            return status == 200 and b"'W')" in body

        assert wait_until(sees_the_run, 90), get(port, "/api/tasks", auth)
        assert wait_until(lambda: latest(p, repo).get("running") == ["W"], 90), "never ran"
        data = status_json(p, repo)  # status during the run leaves the run's Redis running
        assert data["status"] == "RUNNING" and data["running"] == ["W"]
        server = p.server()
        assert listening(server["port"]) == ["0100007F"]
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=server["port"]).ping()  # no password, no access
        assert (p.home() / "server.json").stat().st_mode & 0o777 == 0o600
    finally:
        gate.touch()
        rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, "".join(printed) + rest
    assert (("".join(printed) + rest).count(password)) == 1  # printed once
    assert "completed 1" in rest
    assert get(port, "/") == (None, b"")  # Flower went with the run
    assert listening(port) == [] and listening(server["port"]) == []
    p.assert_nothing_left()


# -- expiry, and the packaged redis-server -----------------------------------------------


def test_local_runs_expire_as_on_any_broker_even_while_the_private_redis_is_stopped(
    tmp_path: Path,
) -> None:
    p = place(tmp_path)
    ttl = 20
    env = {**p.env, "SAGE_RESULT_TTL": str(ttl)}
    repo = make_repo(tmp_path / "repo", {}, index(ticket("E", "echo e > e.txt")))
    proc = submit_local(repo, env)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    run_id = json.loads(out)["run_id"]
    ended = time.time()
    kept = sage(env, "status", run_id, "--local", "--repo", str(repo), "--json")
    assert kept.returncode == 0, kept.stderr
    p.assert_nothing_left()
    time.sleep(max(0.0, ended + ttl + 2 - time.time()))  # nothing runs meanwhile
    gone = sage(env, "status", run_id, "--local", "--repo", str(repo))
    assert gone.returncode == 2 and f"unknown run '{run_id}'" in gone.stderr, gone.stderr
    p.assert_nothing_left()


def test_local_falls_back_to_the_packaged_redis_server_when_the_system_has_none(
    tmp_path: Path,
) -> None:
    p = place(tmp_path)
    repo = make_repo(tmp_path / "repo", {}, index(ticket("A", "echo a > a.txt")))
    only_git = tmp_path / "bin"
    only_git.mkdir()
    (only_git / "git").symlink_to(
        subprocess.run(
            ["sh", "-c", "command -v git"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    env = {**p.env, "PATH": f"{BIN}:{only_git}"}
    proc = submit_local(repo, env)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert json.loads(out)["completed"] == ["A"]
    status = sage(env, "status", "--local", "--repo", str(repo), "--json")
    assert status.returncode == 0, status.stderr
    p.assert_nothing_left()


def test_cancel_local_from_another_terminal_stops_the_local_run_which_exits_4(
    tmp_path: Path,
) -> None:
    p = place(tmp_path)
    repo = make_repo(tmp_path / "repo", {}, index(ticket("SLOW", "sleep 60")))
    proc = submit_local(repo, p.env)
    wait_for_sleep_60(p, proc)
    done = sage(p.env, "cancel", "--local", "--repo", str(repo))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CANCELLED" in done.stdout
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 4, err
    assert json.loads(out)["completed"] == []
    p.assert_nothing_left()
    data = status_json(p, repo)
    assert data["status"] == "CANCELLED"
    assert data["tickets"][0]["state"] != "COMPLETED"
    p.assert_nothing_left()
