"""Bad input and a secure deployment, on real processes.

Messages that are not JSON, ids that are not ids, commit tasks for another
repository, unsafe or oversize patches, executors that misbehave, broker
URLs with passwords and TLS: each is sent to real ``sage-worker`` processes on
a private ``redis-server``, and what reaches the branch is read back from git.
"""

from __future__ import annotations

import os
import pickle
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Producer, Queue

from sage_tasks.app.celery_app import make_app
from sage_tasks.config import load_settings
from sage_tasks.core.index import State
from sage_tasks.dispatch.names import TASK_COMMIT, TASK_PREPARE, TASK_RUN
from sage_tasks.errors import PatchRejected
from sage_tasks.gitops import CommitTarget, check_patch
from sage_tasks.gitops.safety import link_problem, path_problem
from tests.support.builders import Submitted, ticket
from tests.support.fleet import Fleet, fleet_on, unique_queue
from tests.support.gitrepo import INDEX, commit_files, git, index_bytes, make_repo
from tests.support.procs import wait_until
from tests.support.redis_server import RedisServer
from tests.support.runs import tickets_at
from tests.support.tls import TlsRedisServer, make_ca, make_certs

#: the shared ticket worker cuts patches and output small, so the limits are cheap to reach
MAX_PATCH_BYTES = 20_000
MAX_OUTPUT_BYTES = 4096

pytestmark = pytest.mark.fleet(
    env={
        "SAGE_MAX_PATCH_BYTES": str(MAX_PATCH_BYTES),
        "SAGE_MAX_OUTPUT_BYTES": str(MAX_OUTPUT_BYTES),
    }
)


@dataclass
class Served:
    """A bare repository and the commit worker that serves it."""

    repo: Path
    queue: str
    node: str


def refs(repo: Path) -> str:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def tree_entries(repo: Path, ref: str) -> dict[str, tuple[str, bytes]]:
    """Every path of ``ref``'s tree: (mode, content)."""
    out = git(repo, "ls-tree", "-r", "-z", ref)
    entries: dict[str, tuple[str, bytes]] = {}
    for item in out.split("\0"):
        if not item:
            continue
        meta, path = item.split("\t", 1)
        mode, _, oid = meta.split()
        data = git(repo, "cat-file", "blob", oid).encode("utf-8", "surrogateescape")
        entries[path] = (mode, data)
    return entries


def assert_tree_is_safe(repo: Path, ref: str) -> None:
    """No path of ``ref`` touches .git, and no symlink in it leaves the tree."""
    for path, (mode, data) in tree_entries(repo, ref).items():
        assert path_problem(path) is None, path
        if mode == "120000":
            assert link_problem(path, data) is None, (path, data)


def run_on_branch(
    fleet: Fleet,
    served: Served,
    tickets: list[dict[str, Any]],
    *,
    files: dict[str, str | bytes | None] | None = None,
) -> Submitted:
    """Submit ``tickets`` as the index of a fresh base branch of the served repository; wait."""
    base = f"base-{uuid.uuid4().hex[:8]}"
    git(served.repo, "branch", base, "main")
    commit_files(
        served.repo,
        base,
        {**(files or {}), INDEX: index_bytes({"version": "1.0", "tickets": tickets})},
    )
    return fleet.submit(served.repo, "--base", base, "--wait", "--json", queue=served.queue)


def ticket_commit_paths(repo: Path, branch: str, tid: str) -> list[str]:
    """The paths the commit of ticket ``tid`` on ``branch`` changed."""
    log = git(repo, "log", "--format=%H %s", branch)
    sha = next(line.split()[0] for line in log.splitlines() if line.split()[1] == f"{tid}:")
    return git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", sha).split()


# --- the fleet ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(shared_fleet: Fleet) -> Served:
    repo = make_repo(
        shared_fleet.root / "repo-a",
        {"README.md": "hello\n", "docs/guide.md": "guide\n"},
        None,
        bare=True,
    )
    queue = unique_queue()
    node = shared_fleet.start_commit(repo, queue)
    shared_fleet.wait_ready("tickets", node, timeout=30)
    return Served(repo, queue, node)


@pytest.fixture(scope="module")
def app(shared_fleet: Fleet) -> Celery:
    """A Celery app on the fleet's broker, to send tasks the way an attacker with access would."""
    return make_app(load_settings(broker_url=shared_fleet.redis.url))


# --- messages that are not JSON ----------------------------------------------------------


class Payload:
    """Unpickling this creates ``marker``: proof that a worker deserialized pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def publish_raw(url: str, queue: str, body: Any, **options: Any) -> None:
    with Connection(url) as conn:
        q = Queue(queue, Exchange(queue), routing_key=queue)
        Producer(conn).publish(
            body, exchange=q.exchange, routing_key=queue, declare=[q], retry=True, **options
        )


def task_headers(task: str) -> dict[str, Any]:
    tid = str(uuid.uuid4())
    return {
        "lang": "py",
        "task": task,
        "id": tid,
        "root_id": tid,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "attacker",
    }


def test_pickled_and_unknown_content_type_messages_are_refused_and_the_workers_keep_working(
    fleet: Fleet, served: Served, tmp_path: Path
) -> None:
    # the payload is live: unpickling it here creates its marker
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()
    targets = [("tickets", "tickets", TASK_RUN), (served.node, served.queue, TASK_COMMIT)]
    markers = []
    for name, queue, task in targets:
        marker = tmp_path / f"pwned-{name}"
        markers.append(marker)
        # a task message, and one without task headers (Celery's protocol 1 path)
        publish_raw(
            fleet.redis.url,
            queue,
            Payload(marker),
            serializer="pickle",
            headers=task_headers(task),
        )
        publish_raw(fleet.redis.url, queue, Payload(marker), serializer="pickle")
        publish_raw(
            fleet.redis.url,
            queue,
            b"\x00not json at all",
            content_type="application/x-unknown",
            content_encoding="binary",
            headers=task_headers(task),
        )
    client = fleet.redis.client()
    for name, queue, _ in targets:

        def refused(n: str = name) -> bool:
            log = fleet.log(n)
            return (
                log.count("Refusing to deserialize untrusted content of type pickle") >= 2
                and "untrusted content of type application/x-unknown" in log
            )

        assert wait_until(refused, 20), fleet.log(name)
        assert wait_until(lambda q=queue: client.llen(q) == 0, 10)
    assert not any(m.exists() for m in markers)
    # both workers still take work
    res = run_on_branch(fleet, served, [ticket("AFTER", "echo after > after.txt")])
    assert res.code == 0, res.stderr + fleet.logs()
    assert res.data is not None and res.data["completed"] == ["AFTER"]
    assert not any(m.exists() for m in markers)


# --- ids and repositories in messages ----------------------------------------------------

BAD_IDS = ["../../etc", "A;rm -rf /", "x" * 10_000, "A\nSage-Ticket: B", "", "-A", "A/B"]


@pytest.fixture(scope="module")
def done_run(shared_fleet: Fleet, served: Served) -> dict[str, Any]:
    """A finished run of the served repository (its id is a real one)."""
    res = run_on_branch(shared_fleet, served, [ticket("A", "echo a > a.txt")])
    assert res.code == 0 and res.data is not None, res.stderr + shared_fleet.logs()
    return res.data


def test_ticket_and_run_ids_in_messages_are_checked_on_the_workers_and_bad_ones_run_nothing(
    fleet: Fleet, served: Served, app: Celery, done_run: dict[str, Any]
) -> None:
    run_id, branch = done_run["run_id"], done_run["branch"]
    before = refs(served.repo)
    client = fleet.redis.client()
    keys_before = set(client.scan_iter("sage:*"))
    worktrees = fleet.root / "work-tickets" / "worktrees"
    ok = {"ticket": "A", "outcome": "ok", "patch": ""}
    runs, commits = [], []
    for bad in [*BAD_IDS, 42, ["A"], {"id": "A"}, None]:
        runs.append(app.send_task(TASK_RUN, args=[run_id, bad], queue="tickets"))
        runs.append(app.send_task(TASK_RUN, args=[bad, "A"], queue="tickets"))
        outcome = {**ok, "ticket": bad}
        commits.append(app.send_task(TASK_COMMIT, args=[outcome, run_id, bad], queue=served.queue))
        commits.append(app.send_task(TASK_COMMIT, args=[ok, bad, "A"], queue=served.queue))
    for result in runs:
        value = result.get(timeout=30, propagate=False)
        assert result.state == "SUCCESS", result.traceback
        assert value["outcome"] == "failed", value
        assert value["reason"].startswith("refused: invalid"), value
    for result in commits:
        value = result.get(timeout=30, propagate=False)
        assert result.state == "FAILURE", value
        assert str(value).startswith("refused: invalid"), value
    # nothing ran, nothing was written, no key was made from a bad id
    assert refs(served.repo) == before
    assert not worktrees.exists() or not any(worktrees.iterdir())
    new_keys = {k.decode() for k in set(client.scan_iter("sage:*")) - keys_before}
    assert not [k for k in new_keys if any(bad in k for bad in BAD_IDS if bad)], new_keys
    assert tickets_at(served.repo, branch)["A"]["state"] == "COMPLETED"
    assert wait_until(lambda: "refused: invalid ticket id '../../etc'" in fleet.log("tickets"), 15)
    assert wait_until(lambda: "refused: invalid run id '../../etc'" in fleet.log(served.node), 15)


def test_a_commit_task_for_a_repository_the_worker_does_not_serve_is_refused_and_writes_nothing(
    fleet: Fleet, served: Served, app: Celery
) -> None:
    other = make_repo(
        fleet.root / f"repo-b-{uuid.uuid4().hex[:6]}",
        {},
        {"version": "1.0", "tickets": [ticket("B1", "echo b > b.txt")]},
        bare=True,
    )
    # a run of the other repository, whose commit worker is not running
    res = fleet.submit(other, "--json", queue=unique_queue())
    assert res.code == 0 and res.data is not None, res.stderr
    run_id = res.data["run_id"]
    before = (refs(served.repo), refs(other))
    outcome = {"ticket": "B1", "outcome": "ok", "patch": ""}
    commit = app.send_task(TASK_COMMIT, args=[outcome, run_id, "B1"], queue=served.queue)
    prepare = app.send_task(TASK_PREPARE, args=[run_id], queue=served.queue)
    for result in (commit, prepare):
        value = result.get(timeout=30, propagate=False)
        assert result.state == "FAILURE", value
        assert str(value).startswith("refused:") and str(other.resolve()) in str(value), value
    assert (refs(served.repo), refs(other)) == before
    wanted = [
        f"refused: ticket B1 of run {run_id} names repository",
        f"refused: run {run_id} names repository",
    ]
    # the failure is in the result backend before the worker's log line is written
    assert wait_until(lambda: all(w in fleet.log(served.node) for w in wanted), timeout=15), (
        fleet.log(served.node)
    )
    state: Any = fleet.redis.client().hget(f"sage:run:{run_id}:t:B1", "state")
    assert state not in (b"COMPLETED", b"DEFERRED")


# --- patches that reach outside ----------------------------------------------------------

UNSAFE_TICKETS = {
    "ESCAPE": "ln -s /etc escape && echo ok > escape-ok.txt",
    "CLIMB": "ln -s ../../../.. up && echo ok > climb-ok.txt",
    "HOOKDIR": "mkdir -p sub/.GIT/hooks && echo evil > sub/.GIT/hooks/pre-commit"
    " && echo ok > hookdir-ok.txt",
    "OWNGIT": "rm -f .git && mkdir -p .git/hooks && echo evil > .git/hooks/post-checkout"
    " && echo ok > owngit-ok.txt",
    "NESTED": "mkdir -p sub/.git/hooks && echo evil > sub/.git/hooks/post-checkout"
    " && echo ok > nested-ok.txt",
    # ".g\u200cit" is ".git" on macOS (HFS+ ignores U+200C); git on Linux stages it
    "HFSGIT": 'd=$(printf \'.g\\342\\200\\214it/hooks\') && mkdir -p "$d" && echo evil > "$d/x"'
    " && echo ok > hfsgit-ok.txt",
    "INNER": "ln -s README.md inner-link",
}


@pytest.fixture(scope="module")
def unsafe_run(shared_fleet: Fleet, served: Served) -> tuple[Submitted, dict[str, dict[str, Any]]]:
    tickets = [ticket(tid, cmd) for tid, cmd in UNSAFE_TICKETS.items()]
    res = run_on_branch(shared_fleet, served, tickets)
    assert res.code == 1 and res.data is not None, res.stderr + shared_fleet.logs()
    return res, tickets_at(served.repo, res.data["branch"])


def test_a_symlink_pointing_outside_defers_its_ticket_and_none_of_its_changes_reach_the_branch(
    served: Served, unsafe_run: tuple[Submitted, dict[str, dict[str, Any]]]
) -> None:
    res, final = unsafe_run
    assert res.data is not None
    deferred, branch = res.data["deferred"], res.data["branch"]
    assert "symlink 'escape' points to the absolute path '/etc'" in deferred["ESCAPE"]
    assert "symlink 'up' points outside the repository" in deferred["CLIMB"]
    for tid in ("ESCAPE", "CLIMB"):
        assert final[tid]["state"] == "DEFERRED"
        assert final[tid]["deferred_reason"] == deferred[tid]
        assert ticket_commit_paths(served.repo, branch, tid) == [INDEX]
    tree = tree_entries(served.repo, branch)
    assert not {"escape", "up", "escape-ok.txt", "climb-ok.txt"} & set(tree)
    # a symlink inside the tree is an ordinary change
    assert tree["inner-link"] == ("120000", b"README.md")
    assert final["INNER"]["state"] == "COMPLETED"
    assert_tree_is_safe(served.repo, branch)


def test_writes_into_git_directories_never_reach_the_branch_and_defer_with_the_path_named(
    served: Served, unsafe_run: tuple[Submitted, dict[str, dict[str, Any]]]
) -> None:
    res, final = unsafe_run
    assert res.data is not None
    deferred, branch = res.data["deferred"], res.data["branch"]
    # git refuses to stage a .GIT directory: the ticket is DEFERRED at once, naming the path
    assert "sub/.GIT/hooks/pre-commit" in deferred["HOOKDIR"]
    # a command that replaces the worktree's own .git leaves nothing to take
    assert ".git" in deferred["OWNGIT"]
    assert "touches .git" in deferred["HFSGIT"]
    for tid in ("HOOKDIR", "OWNGIT", "HFSGIT"):
        assert final[tid]["state"] == "DEFERRED"
        assert "infrastructure" not in deferred[tid]
        assert ticket_commit_paths(served.repo, branch, tid) == [INDEX]
    # a nested .git directory is left out by git; the rest of the ticket's work is taken
    assert final["NESTED"]["state"] == "COMPLETED"
    assert ticket_commit_paths(served.repo, branch, "NESTED") == sorted([INDEX, "nested-ok.txt"])
    tree = tree_entries(served.repo, branch)
    assert not {"hookdir-ok.txt", "owngit-ok.txt", "hfsgit-ok.txt"} & set(tree)
    assert_tree_is_safe(served.repo, branch)


# --- limits: patch size, output size, output encoding, timeout ---------------------------


@dataclass
class LimitsRun:
    res: Submitted
    final: dict[str, dict[str, Any]]
    pgid_file: Path
    pids_file: Path


@pytest.fixture(scope="module")
def limits_run(
    shared_fleet: Fleet, served: Served, tmp_path_factory: pytest.TempPathFactory
) -> LimitsRun:
    outside = tmp_path_factory.mktemp("outside")
    pgid_file, pids_file = outside / "pgid", outside / "pids"
    hang = (
        # the shell and everything it starts ignore SIGTERM; the pgid goes outside the worktree
        "trap '' TERM; cut -d' ' -f5 /proc/$$/stat > "
        f"{pgid_file}; sleep 300 & echo $! >> {pids_file}; "
        f"sh -c 'sleep 300 & echo $! >> {pids_file}; wait' & echo $! >> {pids_file}; "
        "echo started; wait"
    )
    tickets = [
        ticket("BIG", "seq 1 20000 > big.txt"),
        ticket("LOUD", "seq 1 3000000; echo LAST-LINE; exit 1"),
        ticket("BYTES", "printf 'readable before\\n\\377\\376 junk \\300\\n after\\n'; exit 4"),
        ticket("HANG", hang, timeout=2),
        ticket("FINE", "echo fine > fine.txt"),
        # retitles and clears the terminal of whoever reads the reason, if it got through
        ticket("ESCAPES", "printf 'before \\033]0;pwned\\007\\033[2J after\\r\\n'; exit 2"),
    ]
    res = run_on_branch(shared_fleet, served, tickets)
    assert res.code == 1 and res.data is not None, res.stderr + shared_fleet.logs()
    return LimitsRun(res, tickets_at(served.repo, res.data["branch"]), pgid_file, pids_file)


def test_an_oversize_patch_defers_its_ticket_with_its_size_and_the_limit(
    served: Served, limits_run: LimitsRun
) -> None:
    assert limits_run.res.data is not None
    reason = limits_run.res.data["deferred"]["BIG"]
    assert f"over the limit of {MAX_PATCH_BYTES}" in reason
    size = int(reason.split("patch is ", 1)[1].split(" bytes", 1)[0])
    assert size > MAX_PATCH_BYTES
    assert limits_run.final["BIG"]["state"] == "DEFERRED"
    branch = limits_run.res.data["branch"]
    assert ticket_commit_paths(served.repo, branch, "BIG") == [INDEX]
    assert limits_run.final["FINE"]["state"] == "COMPLETED"


def test_huge_output_is_cut_to_its_tail_in_the_reason(limits_run: LimitsRun) -> None:
    assert limits_run.res.data is not None
    reason = limits_run.res.data["deferred"]["LOUD"]
    assert reason.startswith("exit code 1")
    assert reason.rstrip().endswith("LAST-LINE")
    assert "output ends" in reason
    assert len(reason) < 2 * MAX_OUTPUT_BYTES
    assert limits_run.final["LOUD"]["deferred_reason"] == reason


def test_output_that_is_not_utf8_stays_readable_in_the_reason(
    served: Served, limits_run: LimitsRun
) -> None:
    data = limits_run.res.data
    assert data is not None  # --wait --json printed one parseable object
    reason = data["deferred"]["BYTES"]
    assert reason.startswith("exit code 4")
    assert "readable before" in reason and "junk" in reason and "after" in reason
    assert "\ufffd" in reason
    stored = limits_run.final["BYTES"]["deferred_reason"]
    assert stored == reason
    # the index on the branch is valid UTF-8 JSON
    raw = git(served.repo, "show", f"{data['branch']}:{INDEX}").encode("utf-8", "surrogateescape")
    raw.decode("utf-8")


def test_terminal_escape_sequences_in_output_are_spelled_out_in_the_reason(
    fleet: Fleet, served: Served, limits_run: LimitsRun
) -> None:
    data = limits_run.res.data
    assert data is not None
    reason = data["deferred"]["ESCAPES"]
    assert reason == "exit code 2; output ends: before \\x1b]0;pwned\\x07\\x1b[2J after"
    assert limits_run.final["ESCAPES"]["deferred_reason"] == reason
    shown = fleet.submit(served.repo, "status", data["run_id"], queue=served.queue)
    assert shown.code == 0, shown.stderr
    assert "pwned" in shown.stdout
    assert "\x1b" not in shown.stdout + shown.stderr and "\x07" not in shown.stdout


def test_a_command_that_forks_and_ignores_sigterm_is_killed_with_its_whole_group_at_timeout(
    limits_run: LimitsRun,
) -> None:
    assert limits_run.res.data is not None
    reason = limits_run.res.data["deferred"]["HANG"]
    assert reason.startswith("timed out after 2 s"), reason
    assert "started" in reason
    pgid = int(limits_run.pgid_file.read_text())
    pids = [int(p) for p in limits_run.pids_file.read_text().split()]
    assert len(pids) == 3
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# --- broker credentials ------------------------------------------------------------------

DEFAULT_PASSWORD = "default-pw-8f3a"
ACL_USER, ACL_PASSWORD = "sage", "acl-pw-27c1"


def test_a_broker_with_a_password_and_an_acl_user_works_end_to_end_and_never_shows_either(
    tmp_path: Path,
) -> None:
    server = RedisServer(
        tmp_path / "redis",
        password=DEFAULT_PASSWORD,
        extra_args=("--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all"),
    )
    server.start()
    port = server.port
    default_url = server.url
    acl_url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/0"
    assert redis.Redis.from_url(acl_url).acl_whoami() == ACL_USER
    env_dump = tmp_path / "ticket-env.txt"
    with fleet_on(server, tmp_path / "fleet") as fleet:
        # the ticket worker logs in as the ACL user, the commit worker with the default password
        fleet.start_tickets("tickets", concurrency=1, SAGE_BROKER_URL=acl_url)
        repo = make_repo(
            tmp_path / "repo",
            {},
            {"version": "1.0", "tickets": [ticket("ENV", f"env > {env_dump}; echo e > e.txt")]},
            bare=True,
        )
        queue = unique_queue()
        node = fleet.start_commit(repo, queue, SAGE_BROKER_URL=default_url)
        for url in (acl_url, default_url):
            res = fleet.submit(repo, "--wait", "--json", queue=queue, SAGE_BROKER_URL=url)
            assert res.code == 0, res.stderr + fleet.logs()
            assert res.data is not None and res.data["completed"] == ["ENV"]
        # the ticket's command sees neither the broker URL nor its password
        dump = env_dump.read_text()
        assert DEFAULT_PASSWORD not in dump and ACL_PASSWORD not in dump
        assert "SAGE_BROKER_URL" not in dump
        # a wrong password: exit 3, one error line, and the password is not printed
        for bad in (
            f"redis://{ACL_USER}:wrong-secret-1@127.0.0.1:{port}/0",
            f"redis://:wrong-secret-1@127.0.0.1:{port}/0",
            f"redis://127.0.0.1:{port}/0",
        ):
            for args in (("--wait", "--json"), ("status",)):
                res = fleet.submit(repo, *args, queue=queue, SAGE_BROKER_URL=bad)
                errors = [ln for ln in res.stderr.splitlines() if ln.startswith("sage: error:")]
                assert res.code == 3, res.stderr
                assert len(errors) == 1, res.stderr
                assert "refused the credentials" in errors[0]
                assert "wrong-secret-1" not in res.stdout + res.stderr
            assert [ln for ln in res.stderr.splitlines() if ln.strip()] == errors
        logs = fleet.log("tickets") + fleet.log(node)
        assert DEFAULT_PASSWORD not in logs and ACL_PASSWORD not in logs


# --- TLS ---------------------------------------------------------------------------------


def test_a_tls_broker_works_end_to_end_and_a_certificate_from_another_ca_is_refused(
    tmp_path: Path,
) -> None:
    certs = make_certs(tmp_path / "certs")
    other_ca, _ = make_ca(tmp_path / "other-ca", "someone else")
    server = TlsRedisServer(tmp_path / "redis", certs, password="tls-pw-5e1d")
    server.start()
    plain = f"rediss://:tls-pw-5e1d@127.0.0.1:{server.port}/0"
    with fleet_on(server, tmp_path / "fleet") as fleet:
        # the ticket worker names its CA in the URL; the commit worker gives no TLS options
        # at all, so certificates are checked against the default trust store (SSL_CERT_FILE)
        fleet.start_tickets("tickets", concurrency=1)
        repo = make_repo(
            tmp_path / "repo",
            {},
            {"version": "1.0", "tickets": [ticket("T", "echo t > t.txt")]},
            bare=True,
        )
        queue = unique_queue()
        node = fleet.start_commit(repo, queue, SAGE_BROKER_URL=plain, SSL_CERT_FILE=str(certs.ca))
        fleet.start_tickets("untrusting", concurrency=1, SAGE_BROKER_URL=server.tls_url(other_ca))
        fleet.start_tickets("untrusting-bare", concurrency=1, SAGE_BROKER_URL=plain)
        res = fleet.submit(repo, "--wait", "--json", queue=queue)
        assert res.code == 0, res.stderr + fleet.logs()
        assert res.data is not None and res.data["completed"] == ["T"]
        assert "Connected to rediss://" in fleet.log(node)
        # a server certificate the client does not trust is refused, with or without options
        for bad in (server.tls_url(other_ca), plain):
            res = fleet.submit(repo, "--wait", "--json", queue=queue, SAGE_BROKER_URL=bad)
            errors = [ln for ln in res.stderr.splitlines() if ln.startswith("sage: error:")]
            assert res.code == 3, res.stderr
            assert len(errors) == 1 and "certificate verify failed" in errors[0], res.stderr
            assert "tls-pw-5e1d" not in res.stderr
        for name in ("untrusting", "untrusting-bare"):
            assert wait_until(lambda n=name: "certificate verify failed" in fleet.log(n), 20)
            assert " ready." not in fleet.log(name)


# --- patch checks that tests/integration/test_git_patch.py does not cover ----------------


def _new_file(path: str) -> str:
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
        "@@ -0,0 +1 @@\n+x\n"
    )


def _symlink(path: str, target: str) -> str:
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 120000\n--- /dev/null\n+++ b/{path}\n"
        f"@@ -0,0 +1 @@\n+{target}\n\\ No newline at end of file\n"
    )


def _quoted_new_file(octal_path: str) -> str:
    """A new file as git writes it when the name needs quoting (core.quotePath)."""
    return (
        f'diff --git "a/{octal_path}" "b/{octal_path}"\nnew file mode 100644\n'
        f'--- /dev/null\n+++ "b/{octal_path}"\n@@ -0,0 +1 @@\n+x\n'
    )


GIT_ALIASES = {
    "HFS+ ignorable U+200C": _quoted_new_file(".g\\342\\200\\214it/hooks/post-checkout"),
    "HFS+ ignorable U+FEFF in a subdir": _quoted_new_file("sub/\\357\\273\\277.git/config"),
    "NTFS stream": _new_file(".git::$INDEX_ALLOCATION/hooks/post-checkout"),
    "NTFS trailing dot and space": _new_file(".git. /hooks/post-checkout"),
    "NTFS short name in capitals": _new_file("GIT~1/hooks/post-checkout"),
    "symlink into an HFS+ .git": _symlink("link", "sub/.g\u200dit/config"),
    "symlink into an NTFS stream": _symlink("link", ".git::$INDEX_ALLOCATION/config"),
}


@pytest.mark.parametrize("patch", list(GIT_ALIASES.values()), ids=list(GIT_ALIASES))
def test_names_that_are_git_on_a_mac_or_on_windows_are_refused(patch: str) -> None:
    with pytest.raises(PatchRejected, match=r"touches \.git|points into \.git"):
        check_patch(patch.encode())


@pytest.mark.parametrize("name", [".github", ".gitignore", "git", "my.git", ".gi", "a.git~1"])
def test_names_that_only_look_like_git_pass(name: str) -> None:
    assert check_patch(_new_file(f"{name}/x").encode()) == [f"{name}/x"]


def test_a_patch_writing_through_a_symlink_already_on_the_branch_is_not_committed(
    tmp_path: Path,
) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"docs/guide.md": "guide\n"},
        {"version": "1.0", "tickets": [ticket("T", "true")]},
        bare=True,
    )
    # the branch holds an inner symlink: link -> docs
    env = {"GIT_INDEX_FILE": str(tmp_path / "index")}
    git(repo, "read-tree", "main", env=env)
    blob = git(repo, "hash-object", "-w", "--stdin", input=b"docs").strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"120000,{blob},link", env=env)
    tree = git(repo, "write-tree", env=env).strip()
    head = git(repo, "commit-tree", tree, "-p", "main", "-m", "link").strip()
    git(repo, "update-ref", "refs/heads/run", head)
    patch = _new_file("link/evil.txt").encode()
    assert check_patch(patch) == ["link/evil.txt"]  # the link is not in the patch itself
    res = CommitTarget(repo, "run").commit("T", "t", "r1", patch, State.COMPLETED)
    assert res.state is State.DEFERRED
    assert "beyond a symbolic link" in tickets_at(repo, "run")["T"]["deferred_reason"]
    assert git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", res.sha).split() == [INDEX]
    assert_tree_is_safe(repo, "run")
