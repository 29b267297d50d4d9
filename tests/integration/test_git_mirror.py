"""A ticket worker's mirror and worktrees: shared fetches, worktrees kept aside between uses.

Reusing a kept worktree (a clean checkout every time, a fresh one when it looks
wrong) and the race of worktree bookkeeping are tested in test_git_mirror_reuse.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sage_tasks.errors import RepositoryError
from sage_tasks.gitops import Mirror, prune_workdir
from tests.support.gitrepo import commit_files, git, make_repo
from tests.support.worktrees import worktree_listings


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin.git", {"a.txt": "a\n"}, None, bare=True)


@pytest.fixture
def mirror(tmp_path: Path, origin: Path) -> Mirror:
    return Mirror(tmp_path / "workdir", str(origin))


def worktrees_of(mirror: Mirror) -> list[str]:
    """The mirror's linked worktrees (``git worktree list`` lines, bare repositories left out)."""
    return [entry.splitlines()[0] for entry in worktree_listings(mirror)]


def test_fetch_keeps_one_bare_mirror_per_url_and_returns_the_branch_head(
    mirror: Mirror, origin: Path, tmp_path: Path
) -> None:
    git(origin, "branch", "run", "main")
    head = git(origin, "rev-parse", "run").strip()

    assert mirror.fetch("run") == head
    key = hashlib.sha256(str(origin).encode()).hexdigest()[:16]
    assert mirror.path == tmp_path / "workdir" / "mirrors" / key
    assert git(mirror.path, "rev-parse", "--is-bare-repository").strip() == "true"

    moved = commit_files(origin, "run", {"b.txt": "b\n"})
    assert mirror.fetch("run") == moved


def test_a_missing_branch_is_an_error_naming_it(mirror: Mirror) -> None:
    with pytest.raises(RepositoryError, match="no-such-branch"):
        mirror.fetch("no-such-branch")
    with pytest.raises(RepositoryError, match="not a valid branch name"):
        mirror.fetch("a:b")


def test_a_password_in_the_url_is_not_shown_in_errors(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "w", "http://user:s3cret@127.0.0.1:9/repo.git")
    with pytest.raises(RepositoryError) as err:
        mirror.fetch("main")
    assert "s3cret" not in str(err.value)


def test_a_worktree_is_checked_out_at_the_commit_and_put_aside_afterwards(mirror: Mirror) -> None:
    head = mirror.fetch("main")
    with mirror.worktree(head) as path:
        assert (path / "a.txt").read_text() == "a\n"
        assert git(path, "rev-parse", "HEAD").strip() == head
        (path / "scratch.txt").write_text("left behind?\n")
        assert len(worktrees_of(mirror)) == 1
    # worktrees/ holds only worktrees in use; this process keeps its own in idle/
    assert not path.exists()
    assert list(mirror.worktrees.iterdir()) == []
    kept = mirror.idle / path.name
    assert worktrees_of(mirror) == [f"worktree {kept}"]
    with mirror.worktree(head) as again:
        assert again == path
        assert not (again / "scratch.txt").exists()
    mirror.close()
    assert worktrees_of(mirror) == []
    assert list(mirror.worktrees.iterdir()) == list(mirror.idle.iterdir()) == []


def test_a_worktree_is_clean_again_after_work_that_raised_and_removable_if_made_read_only(
    mirror: Mirror,
) -> None:
    head = mirror.fetch("main")
    with pytest.raises(RuntimeError, match="executor blew up"), mirror.worktree(head) as path:
        (path / "locked").mkdir()
        (path / "locked" / "f").write_text("x")
        (path / "locked").chmod(0o500)
        raise RuntimeError("executor blew up")
    assert not path.exists()
    with mirror.worktree(head) as again:
        assert sorted(p.name for p in again.iterdir()) == [".git", ".sage", "a.txt"]
        (again / "locked").mkdir()
        (again / "locked" / "f").write_text("x")
        (again / "locked").chmod(0o500)
    mirror.close()
    assert worktrees_of(mirror) == []
    assert list(mirror.idle.iterdir()) == []


def test_a_bad_commit_leaves_no_worktree_behind(mirror: Mirror) -> None:
    head = mirror.fetch("main")
    with pytest.raises(Exception), mirror.worktree("0" * 40):  # noqa: B017
        pass
    assert list(mirror.worktrees.iterdir()) == []
    assert list(mirror.idle.iterdir()) == []
    # a kept worktree asked for a missing commit is thrown away too
    with mirror.worktree(head):
        pass
    with pytest.raises(Exception), mirror.worktree("0" * 40):  # noqa: B017
        pass
    assert list(mirror.worktrees.iterdir()) == list(mirror.idle.iterdir()) == []
    assert worktrees_of(mirror) == []
    with pytest.raises(RepositoryError), mirror.worktree("HEAD; rm -rf /"):
        pass


CRASH = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from sage_tasks.gitops import Mirror
    m = Mirror(Path(sys.argv[1]), sys.argv[2])
    with m.worktree(m.fetch("main")) as path:
        print(path, flush=True)
        os.kill(os.getpid(), 9)
""")


def test_prune_removes_what_a_killed_worker_left_and_keeps_live_worktrees(
    mirror: Mirror, origin: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(mirror.workdir), str(origin)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL
    stale = Path(proc.stdout.strip())
    assert stale.is_dir() and len(worktrees_of(mirror)) == 1
    stale_lock = mirror.idle / f"{stale.name}.lock"
    assert stale_lock.exists()

    with mirror.worktree(mirror.fetch("main")) as live:
        assert prune_workdir(mirror.workdir) == 1
        assert not stale.exists() and not stale_lock.exists()
        assert live.is_dir() and (live / "a.txt").exists()
        assert [ln.split(" ", 1)[1] for ln in worktrees_of(mirror)] == [str(live)]
        assert mirror.prune() == 0
    # a live process's kept worktree is not a leftover either
    assert mirror.prune() == 0
    assert worktrees_of(mirror) == [f"worktree {mirror.idle / live.name}"]
    mirror.close()
    assert worktrees_of(mirror) == []


def test_prune_of_an_empty_workdir_does_nothing(tmp_path: Path) -> None:
    assert prune_workdir(tmp_path / "nothing-yet") == 0


def _fetch_and_check_out(workdir: str, url: str) -> tuple[str, int]:
    m = Mirror(Path(workdir), url)
    head = m.fetch("main")
    with m.worktree(head) as path:
        time.sleep(0.05)
        return (path / "a.txt").read_text() + head, os.getpid()


def test_worker_processes_on_one_host_share_a_mirror(mirror: Mirror, origin: Path) -> None:
    head = git(origin, "rev-parse", "main").strip()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_fetch_and_check_out, [(str(mirror.workdir), str(origin))] * 8)
    assert [text for text, _ in results] == ["a\n" + head] * 8
    # one kept worktree per process, left for prune once the processes are gone
    pids = {pid for _, pid in results}
    assert len(worktrees_of(mirror)) == len(pids)
    assert prune_workdir(mirror.workdir) == len(pids)
    assert worktrees_of(mirror) == []
    assert list(mirror.idle.iterdir()) == []
    assert sorted(os.listdir(mirror.workdir / "mirrors")) == sorted(
        [mirror.key, mirror.key + ".lock"]
    )


def test_a_fetch_that_hangs_fails_after_the_timeout(tmp_path: Path) -> None:
    import socket

    with socket.socket() as server:  # accepts, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"git://127.0.0.1:{server.getsockname()[1]}/repo.git"
        mirror = Mirror(tmp_path / "w", url, fetch_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(RepositoryError, match="timed out"):
            mirror.fetch("main")
    assert time.monotonic() - started < 10


def test_a_relative_path_url_names_the_same_mirror_as_its_absolute_form(
    tmp_path: Path, origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(origin.parent)
    relative = Mirror(tmp_path / "w", origin.name)
    assert relative.key == Mirror(tmp_path / "w", str(origin)).key
    assert relative.fetch("main") == git(origin, "rev-parse", "main").strip()
