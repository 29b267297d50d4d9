"""A worker process's kept worktree: a clean checkout for every ticket, a fresh one when broken.

Each test plays consecutive tickets in one process: the first leaves a mess,
the next must see exactly the checkout a fresh clone would give. And worktree
bookkeeping under several processes adding and removing at once.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sage_tasks.errors import PatchRejected
from sage_tasks.gitops import Mirror, capture_patch, prune_workdir
from tests.support.gitrepo import INDEX, commit_files, git, make_repo
from tests.support.worktrees import (
    admin_dirs,
    assert_clean_checkout,
    fresh_clones,
    sh,
    worktree_listings,
    worktrees_of,
)

FILES: dict[str, str | bytes] = {
    "a.txt": "a\n",
    "gone.txt": "deleted by a ticket\n",
    "run.sh": "#!/bin/sh\necho hi\n",
    "sub/dir/f.txt": "f\n",
    ".gitignore": "*.log\nbuild/\n",
}


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin.git", FILES, None, bare=True)


MESS = """
    echo new > new.txt
    echo ignored > debug.log
    mkdir -p build/deep && echo obj > build/deep/out.o
    echo changed > a.txt
    echo staged > sub/dir/f.txt && git add sub/dir/f.txt
    echo staged-new > staged-new.txt && git add staged-new.txt
    rm gone.txt
    chmod +x run.sh && chmod 600 sub/dir/f.txt
    mkdir -p new/nested/dir && echo x > new/nested/dir/x.txt
    mkdir -p nestedrepo && git -C nestedrepo init -q && echo r > nestedrepo/r.txt
    echo 'secret*' >> "$(git rev-parse --git-path info/exclude)" && echo s > secret.txt
    ln -s /etc linked
"""


@pytest.fixture
def url_mirror(tmp_path: Path, origin: Path) -> Iterator[Mirror]:
    """A mirror of the origin's URL: it keeps the branches it fetched (a local one keeps none)."""
    m = Mirror(tmp_path / "workdir", origin.resolve().as_uri())
    yield m
    m.close()


def test_consecutive_tickets_in_one_process_share_a_worktree_and_each_sees_a_clean_checkout(
    url_mirror: Mirror, origin: Path, fresh: Callable[[str], Path]
) -> None:
    mirror = url_mirror
    head = mirror.fetch("main")
    with mirror.worktree(head) as first:
        assert_clean_checkout(first, head, fresh(head))
        sh(first, MESS)
        assert (first / "secret.txt").exists()
    with mirror.worktree(head, "main") as second:
        assert second == first  # reused, not made afresh
        assert_clean_checkout(second, head, fresh(head))
        # the command commits on a branch of its own and checks the run's branch out
        sh(second, "echo c > c.txt && git add c.txt && git commit -qm c && git checkout -q main")
    moved = commit_files(origin, "main", {"a.txt": "a2\n", "gone.txt": None, "z/new.txt": "z\n"})
    assert mirror.fetch("main") == moved
    with mirror.worktree(moved, "main") as third:
        assert third == first
        assert_clean_checkout(third, moved, fresh(moved))
        # another ticket of the host can still fetch while this one has the branch checked out
        sh(third, "git checkout -q main")
        assert mirror.fetch("main") == moved
    assert len(worktrees_of(mirror)) == 1
    # put aside detached: the branch is free for any other worktree of the mirror
    (listing,) = worktree_listings(mirror)
    assert "\ndetached" in listing and "branch " not in listing
    # back to an older commit: what the newer one added is gone
    with mirror.worktree(head) as fourth:
        assert fourth == first
        assert_clean_checkout(fourth, head, fresh(head))


#: what a ticket whose patch is taken leaves: new, ignored, modified, deleted, re-moded
CAPTURED = """
    echo new > new.txt
    echo ignored > debug.log
    mkdir -p build/deep && echo obj > build/deep/out.o
    echo changed > a.txt
    rm gone.txt
    chmod +x run.sh
    mkdir -p new/nested/dir && echo x > new/nested/dir/x.txt
"""


@pytest.mark.parametrize("same_head", [True, False], ids=["same-head", "new-head"])
def test_after_a_captured_patch_the_next_ticket_sees_a_clean_checkout(
    mirror: Mirror, origin: Path, fresh: Callable[[str], Path], same_head: bool
) -> None:
    head = mirror.fetch("main")
    with mirror.worktree(head) as first:
        sh(first, CAPTURED)
        # the patch capture stages everything that is not ignored
        patch = capture_patch(
            first, head, exclude=[INDEX], max_bytes=1 << 20, git_dir=mirror.git_dir(first)
        )
        assert "new/nested/dir/x.txt" in patch.paths and "debug.log" not in patch.paths
    if not same_head:
        head = commit_files(origin, "main", {"a.txt": "a3\n", "z/late.txt": "late\n"})
        assert mirror.fetch("main") == head
    with mirror.worktree(head) as second:
        assert second == first
        assert_clean_checkout(second, head, fresh(head))


def test_an_operation_in_progress_and_per_worktree_state_do_not_survive(
    mirror: Mirror, fresh: Callable[[str], Path]
) -> None:
    head = mirror.fetch("main")
    with mirror.worktree(head) as path:
        gitdir = Path(git(path, "rev-parse", "--absolute-git-dir").strip())
        (gitdir / "MERGE_HEAD").write_text(head + "\n")
        (gitdir / "MERGE_MSG").write_text("merge\n")
        (gitdir / "rebase-merge").mkdir()
        (gitdir / "rebase-merge" / "head-name").write_text("refs/heads/main\n")
        (gitdir / "BISECT_LOG").write_text("x\n")
        (gitdir / "config.worktree").write_text("[core]\n\tautocrlf = true\n")
        (gitdir / "info").mkdir()
        (gitdir / "info" / "sparse-checkout").write_text("/a.txt\n")
        (gitdir / "index.lock").write_text("")
    with mirror.worktree(head) as again:
        assert again == path
        assert_clean_checkout(again, head, fresh(head))
        assert sorted(os.listdir(gitdir)) == ["HEAD", "commondir", "gitdir", "index"]


BREAKAGES = {
    "dot-git-garbage": "echo 'gitdir: /nowhere' > .git",
    "dot-git-removed": "rm .git",
    "dot-git-a-directory": "rm .git && git init -q . && git commit -q --allow-empty -m x",
    "commondir-elsewhere": 'echo /tmp > "$(git rev-parse --git-dir)/commondir"',
    "git-dir-removed": 'rm -rf "$(git rev-parse --git-dir)"',
    "assume-unchanged": "echo hidden > a.txt && git update-index --assume-unchanged a.txt",
    "skip-worktree": "echo hidden > a.txt && git update-index --skip-worktree a.txt",
    "intent-to-add": "echo n > n.txt && git add -N n.txt",
    "index-v4": "git update-index --index-version 4",
    "split-index": "git update-index --split-index",
    "index-garbage": 'echo garbage > "$(git rev-parse --git-path index)"',
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_worktree_a_command_broke_is_replaced_by_a_fresh_one(
    mirror: Mirror, fresh: Callable[[str], Path], breakage: str
) -> None:
    head = mirror.fetch("main")
    with mirror.worktree(head) as path:
        gitdir = mirror.git_dir(path)
        assert gitdir is not None and gitdir.is_dir()
        sh(path, BREAKAGES[breakage])
    with mirror.worktree(head) as again:
        assert again != path
        assert not path.exists() and not (mirror.idle / path.name).exists()
        assert not (mirror.idle / f"{path.name}.lock").exists()
        assert_clean_checkout(again, head, fresh(head))
        assert worktrees_of(mirror) == [str(again)]
        assert admin_dirs(mirror) == [again.name]
    with mirror.worktree(head) as third:
        assert third == again


def test_a_worktree_whose_directory_is_gone_or_unwritable_is_made_afresh(
    mirror: Mirror, fresh: Callable[[str], Path]
) -> None:
    head = mirror.fetch("main")
    with mirror.worktree(head) as path:
        pass
    # something removed the kept worktree between two tickets
    subprocess.run(["rm", "-rf", str(mirror.idle / path.name)], check=True)
    with mirror.worktree(head) as again:
        assert again != path
        assert_clean_checkout(again, head, fresh(head))
        # the command deletes its own worktree: it cannot be put aside
        subprocess.run(["rm", "-rf", str(again)], check=True)
    with mirror.worktree(head) as third:
        assert third not in (path, again)
        assert_clean_checkout(third, head, fresh(head))
        (third / "locked").mkdir()
        (third / "locked" / "f").write_text("x")
        (third / "locked").chmod(0)
        third.chmod(0o500)
    with mirror.worktree(head) as fourth:
        assert_clean_checkout(fourth, head, fresh(head))
    assert worktrees_of(mirror) == [str(mirror.idle / fourth.name)]
    assert admin_dirs(mirror) == [fourth.name]


def test_a_patch_is_taken_through_the_known_git_directory_and_refused_when_dot_git_changed(
    mirror: Mirror,
) -> None:
    head = mirror.fetch("main")
    with mirror.worktree(head) as path:
        sh(path, "echo changed > a.txt && echo new > new.txt && rm gone.txt && chmod +x run.sh")
        via = capture_patch(path, head, exclude=[INDEX], max_bytes=1 << 20)
        known = capture_patch(
            path, head, exclude=[INDEX], max_bytes=1 << 20, git_dir=mirror.git_dir(path)
        )
        assert known == via
        assert sorted(known.paths) == ["a.txt", "gone.txt", "new.txt", "run.sh"]
    for breakage in ("dot-git-garbage", "dot-git-removed", "dot-git-a-directory"):
        with mirror.worktree(head) as path:
            sh(path, BREAKAGES[breakage])
            with pytest.raises(PatchRejected, match=r"\.git"):
                capture_patch(
                    path, head, exclude=[INDEX], max_bytes=1 << 20, git_dir=mirror.git_dir(path)
                )


def test_nested_worktrees_of_one_process_are_distinct(mirror: Mirror) -> None:
    head = mirror.fetch("main")
    with mirror.worktree(head) as outer, mirror.worktree(head) as inner:
        assert outer != inner
        (outer / "o.txt").write_text("o")
        assert not (inner / "o.txt").exists()
    assert len(worktrees_of(mirror)) == 2
    with mirror.worktree(head) as again:
        assert again in (outer, inner)
        assert not (again / "o.txt").exists()


def _child_takes_a_worktree(
    workdir: str, url: str, head: str, queue: multiprocessing.Queue[str]
) -> None:
    m = Mirror(Path(workdir), url)
    with m.worktree(head) as path:
        queue.put(str(path))


def test_a_forked_child_does_not_take_its_parents_worktree(mirror: Mirror, origin: Path) -> None:
    head = mirror.fetch("main")
    with mirror.worktree(head) as parents:
        pass
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(
        target=_child_takes_a_worktree, args=(str(mirror.workdir), str(origin), head, queue)
    )
    child.start()
    childs = Path(queue.get(timeout=60))
    child.join(60)
    assert child.exitcode == 0
    assert childs != parents
    # the child is gone: its worktree is a leftover; the parent's is still held
    assert prune_workdir(mirror.workdir) == 1
    with mirror.worktree(head) as again:
        assert again == parents


# -- the race of git's worktree bookkeeping ----------------------------------------------------


def _hammer(workdir: str, url: str, rounds: int) -> list[str]:
    """Make and remove worktrees as fast as possible; return the errors."""
    m = Mirror(Path(workdir), url)
    errors = []
    for i in range(rounds):
        try:
            head = m.fetch("main")
            with m.worktree(head) as path:
                if (path / "a.txt").read_text() != "a\n":
                    errors.append(f"{path}: wrong content")
                if i % 3 == 0:
                    (path / ".git").write_text("gitdir: /broken\n")  # made afresh next time
            if i % 2 == 0:
                m.close()  # removed: the next round adds a new one
            if i % 7 == 0:
                m.prune()
        except Exception as exc:  # collected for the assertion
            errors.append(f"{type(exc).__name__}: {exc}")
    m.close()
    return errors


def test_worktrees_added_and_removed_by_many_processes_at_once_never_fail(
    mirror: Mirror, origin: Path
) -> None:
    mirror.fetch("main")
    procs = 6
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        results = pool.starmap(_hammer, [(str(mirror.workdir), str(origin), 60)] * procs)
    errors = [e for errs in results for e in errs]
    assert errors == []
    assert worktrees_of(mirror) == []
    assert admin_dirs(mirror) == []
    assert list(mirror.worktrees.iterdir()) == list(mirror.idle.iterdir()) == []


@pytest.mark.parametrize("kind", ["path", "url"])
def test_a_sha256_repository_is_mirrored_and_its_worktree_kept(tmp_path: Path, kind: str) -> None:
    """git fetches only between repositories of one object format: the mirror is made in
    the repository's (read from it, or from the length of the id the URL gives), and
    the kept worktree's index, with 32-byte ids, is read and reused."""
    origin = make_repo(tmp_path / "origin.git", FILES, None, bare=True, object_format="sha256")
    url = str(origin) if kind == "path" else origin.resolve().as_uri()
    mirror = Mirror(tmp_path / "workdir", url)
    fresh = fresh_clones(origin, tmp_path)
    try:
        head = mirror.fetch("main")
        assert len(head) == 64 and head == git(origin, "rev-parse", "main").strip()
        with mirror.worktree(head, "main") as first:
            assert_clean_checkout(first, head, fresh(head))
            sh(first, "echo x >> a.txt && ln -s a.txt link && mkdir -p n && echo n > n/n")
            patch = capture_patch(
                first, head, exclude=[INDEX], max_bytes=1 << 20, git_dir=mirror.git_dir(first)
            )
            mirror.captured(first)
        assert sorted(patch.paths) == ["a.txt", "link", "n/n"]
        with mirror.worktree(head, "main") as second:
            assert second == first  # reused: its index was read, not thrown away
            assert_clean_checkout(second, head, fresh(head))
            assert git(second, "rev-parse", "main").strip() == head
    finally:
        mirror.close()
