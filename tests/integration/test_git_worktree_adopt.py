"""Kept worktrees outliving their process (``SAGE_KEEP_WORKTREES``): a later process adopts
them, reset in full whatever was left in them; worktrees still held, left mid-ticket or
tampered with are never adopted; prune keeps or removes them as asked.

Worktrees are made and left by real child processes (``python -c``), as ticket worker
processes that stop or die leave them.
"""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sage_tasks.gitops import Mirror, capture_patch, prune_workdir
from tests.support.gitrepo import INDEX, commit_files, make_repo
from tests.support.worktrees import (
    GitTrace,
    admin_dirs,
    assert_clean_checkout,
    fresh_clones,
    sh,
    worktrees_of,
)

FILES: dict[str, str | bytes] = {"a.txt": "a\n", "sub/f.txt": "f\n", ".gitignore": "*.log\n"}

#: a process takes a worktree, runs a messy command in it, and stops (or dies inside)
LEAVE = """
import os, signal, subprocess, sys
from pathlib import Path
from sage_tasks.gitops import Mirror
m = Mirror(Path(sys.argv[1]), sys.argv[2], adopt=sys.argv[3] == "adopt")
with m.worktree(m.fetch("main")) as path:
    subprocess.run(
        "echo mess > a.txt && echo x > new.txt && echo l > debug.log && mkdir -p d/e "
        "&& git add new.txt",
        shell=True, cwd=path, check=True,
    )
    print(path.name, flush=True)
    if sys.argv[4] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin.git", FILES, None, bare=True)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "workdir"


@pytest.fixture
def adopter(workdir: Path, origin: Path) -> Iterator[Mirror]:
    m = Mirror(workdir, str(origin), adopt=True)
    yield m
    m.close()


@pytest.fixture
def fresh(tmp_path: Path, origin: Path) -> Callable[[str], Path]:
    return fresh_clones(origin, tmp_path)


def leave(workdir: Path, origin: Path, *, how: str = "stop", adopt: bool = False) -> str:
    """The name of the worktree a child process used, then left (``stop``) or died in."""
    proc = subprocess.run(
        [sys.executable, "-c", LEAVE, str(workdir), str(origin), "adopt" if adopt else "-", how],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == (-signal.SIGKILL if how == "die" else 0), proc.stderr
    return proc.stdout.strip()


def test_a_worktree_a_stopped_process_put_aside_is_adopted_and_reset_in_full(
    adopter: Mirror,
    workdir: Path,
    origin: Path,
    fresh: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = leave(workdir, origin)
    assert (workdir / "idle" / name).is_dir()
    head = commit_files(origin, "main", {"a.txt": "a2\n", "z/n.txt": "n\n"})
    trace = GitTrace(tmp_path / "trace.json")
    monkeypatch.setenv("GIT_TRACE2_EVENT", str(trace.path))
    with adopter.worktree(adopter.fetch("main")) as path:
        assert path.name == name  # not made afresh
        assert_clean_checkout(path, head, fresh(head))
    assert any(c.startswith("checkout -q --force") for c in trace.commands())
    assert not any(c.startswith("worktree add") for c in trace.commands())
    assert worktrees_of(adopter) == [str(workdir / "idle" / name)]
    with adopter.worktree(head) as again:  # from now on it is this process's own
        assert again.name == name


def test_without_adoption_a_new_worktree_is_made_and_prune_removes_the_old_one(
    workdir: Path, origin: Path
) -> None:
    name = leave(workdir, origin)
    m = Mirror(workdir, str(origin))
    with m.worktree(m.fetch("main")) as path:
        assert path.name != name
    assert prune_workdir(workdir) == 1
    assert not (workdir / "idle" / name).exists()
    assert not (workdir / "idle" / f"{name}.lock").exists()
    m.close()


def test_prune_keeps_idle_worktrees_for_adoption_and_removes_those_left_mid_ticket(
    workdir: Path, origin: Path
) -> None:
    idle = leave(workdir, origin)
    died = leave(workdir, origin, how="die")
    assert (workdir / "worktrees" / died).is_dir()
    assert prune_workdir(workdir, keep_idle=True) == 1
    assert (workdir / "idle" / idle).is_dir() and not (workdir / "worktrees" / died).exists()
    m = Mirror(workdir, str(origin))
    assert sorted(worktrees_of(m)) == [str(workdir / "idle" / idle)]
    assert admin_dirs(m) == [idle]
    # a later cut: what was not taken since then goes
    time.sleep(0.05)
    assert prune_workdir(workdir, keep_idle=True, used_since=time.time() + 5) == 1
    assert worktrees_of(m) == [] and admin_dirs(m) == []


def test_a_worktree_a_live_process_put_aside_is_not_adopted(
    adopter: Mirror, workdir: Path, origin: Path
) -> None:
    ctx = multiprocessing.get_context("spawn")
    names = ctx.Queue()
    done = ctx.Event()
    holder = ctx.Process(target=_keep_one, args=(str(workdir), str(origin), names, done))
    holder.start()
    try:
        held = names.get(timeout=60)
        assert (workdir / "idle" / held).is_dir()  # between two tickets of its process
        with adopter.worktree(adopter.fetch("main")) as path:
            assert path.name != held
    finally:
        done.set()
        holder.join(60)
    assert holder.exitcode == 0


def _keep_one(workdir: str, url: str, names: Any, done: Any) -> None:
    m = Mirror(Path(workdir), url, adopt=True)
    with m.worktree(m.fetch("main")) as path:
        pass
    names.put(path.name)
    done.wait(60)


def test_processes_adopting_at_once_each_get_a_different_worktree(
    workdir: Path, origin: Path, fresh: Callable[[str], Path]
) -> None:
    names = {leave(workdir, origin) for _ in range(3)}
    assert len(names) == 3
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        taken = pool.starmap(_take_and_hold, [(str(workdir), str(origin))] * 3)
    assert sorted(taken) == sorted(names)


def _take_and_hold(workdir: str, url: str) -> str:
    m = Mirror(Path(workdir), url, adopt=True)
    with m.worktree(m.fetch("main")) as path:
        time.sleep(0.5)  # the others look while this one holds it
        return path.name


def test_a_worktree_whose_dot_git_names_another_is_removed_not_adopted(
    adopter: Mirror, workdir: Path, origin: Path, fresh: Callable[[str], Path]
) -> None:
    first = leave(workdir, origin)
    second = leave(workdir, origin)
    # the second's .git now names the first's git directory (as a command could leave it)
    first_git = (workdir / "idle" / first / ".git").read_text()
    (workdir / "idle" / second / ".git").write_text(first_git)
    head = adopter.fetch("main")
    with adopter.worktree(head) as path, adopter.worktree(head) as other:
        assert path.name == first and other.name not in (first, second)
        assert_clean_checkout(path, head, fresh(head))
        assert_clean_checkout(other, head, fresh(head))
    assert not (workdir / "idle" / second).exists()
    assert sorted(admin_dirs(adopter)) == sorted([first, other.name])


def test_a_worktree_left_mid_ticket_is_not_adopted(
    adopter: Mirror, workdir: Path, origin: Path, fresh: Callable[[str], Path]
) -> None:
    died = leave(workdir, origin, how="die")
    head = adopter.fetch("main")
    with adopter.worktree(head) as path:
        assert path.name != died
        assert_clean_checkout(path, head, fresh(head))


def test_what_a_command_changed_in_the_shared_mirror_is_put_back_for_the_next_process(
    workdir: Path, origin: Path, tmp_path: Path
) -> None:
    """A command that finds the mirror (its worktree's repository borrows the mirror's
    objects) and writes its config, ``info/exclude`` and ``info/attributes``: a keep-mode
    worker that starts puts them back as the mirror was made."""
    m = Mirror(workdir, str(origin))
    head = m.fetch("main")
    made = {name: (m.path / name).read_bytes() for name in ("config", "info/exclude")}
    with m.worktree(head) as path:
        sh(
            path,
            'M="$(dirname "$(cat "$(git rev-parse --git-common-dir)/objects/info/alternates")")"'
            ' && git --git-dir="$M" config core.filemode false'
            ' && git --git-dir="$M" config core.autocrlf true'
            ' && echo "secret*" >> "$M/info/exclude"'
            ' && echo "*.txt -diff" > "$M/info/attributes"',
        )
    m.close()
    assert (m.path / "config").read_bytes() != made["config"]
    prune_workdir(workdir, keep_idle=True)
    assert {name: (m.path / name).read_bytes() for name in made} == made
    assert not (m.path / "info" / "attributes").exists()
    # and the capture in the next worktree sees a mode change and a "secret" file again
    adopter = Mirror(workdir, str(origin), adopt=True)
    with adopter.worktree(head) as path:
        sh(path, "chmod +x a.txt && echo s > secret.txt")
        patch = capture_patch(path, head, exclude=[INDEX], max_bytes=1 << 20)
    assert sorted(patch.paths) == ["a.txt", "secret.txt"]
    adopter.close()


def test_a_worktree_linked_to_the_mirror_itself_is_removed_not_adopted(
    workdir: Path, origin: Path, adopter: Mirror, fresh: Callable[[str], Path]
) -> None:
    """An idle worktree left by a version whose worktrees shared the mirror's repository
    (``git worktree add`` in the mirror): the adopter removes it, mirror side included,
    and makes one with a repository of its own."""
    head = adopter.fetch("main")
    name = f"{adopter.key}-1-oldlayout000"
    old = adopter.idle / name
    adopter.idle.mkdir(parents=True)
    sh(adopter.path, f"git worktree add -q --detach {old} {head}")
    (adopter.idle / f"{name}.lock").touch()
    assert worktrees_of(adopter) == [str(old)]
    with adopter.worktree(head, "main") as path:
        assert path.name != name
        assert_clean_checkout(path, head, fresh(head))
    assert not old.exists() and not (adopter.idle / f"{name}.lock").exists()
    assert not (adopter.path / "worktrees" / name).exists()
    assert worktrees_of(adopter) == [str(adopter.idle / path.name)]
