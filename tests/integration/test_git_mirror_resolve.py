"""Which commit a ticket runs on: the branch head, fetched only when it must be.

A mirror of a local path borrows the repository's objects and reads the head
from the repository itself, so it needs no fetch; a URL's mirror fetches once
per new head. Whether a fetch ran is read off FETCH_HEAD (or the URL
mirror's branch ref), which only a fetch writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sage_tasks.gitops import Mirror
from tests.support.gitrepo import commit_files, git, make_repo

FILES: dict[str, str | bytes] = {"a.txt": "a\n"}


def mirrored_head(mirror: Mirror) -> str:
    return git(mirror.path, "rev-parse", "refs/heads/main").strip()


def fetched(mirror: Mirror) -> str:
    """What the mirror's last fetch brought (FETCH_HEAD's first line)."""
    return (mirror.path / "FETCH_HEAD").read_text().split("\t", 1)[0]


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin.git", FILES, None, bare=True)


def test_a_local_mirror_borrows_the_objects_and_reads_the_head_without_a_fetch(
    tmp_path: Path, origin: Path
) -> None:
    mirror = Mirror(tmp_path / "workdir", str(origin))
    first = mirror.resolve("main", "")  # no mirror yet: a fetch makes it
    assert fetched(mirror) == first
    alternates = (mirror.path / "objects" / "info" / "alternates").read_text().split()
    assert alternates == [str((origin / "objects").resolve())]
    moved = commit_files(origin, "main", {"b.txt": "b\n"})
    # the branch head as the repository has it, whatever the record says
    for hint in (moved, first, "", "0" * 40):
        assert mirror.resolve("main", hint) == moved
    assert fetched(mirror) == first  # no fetch ran
    with mirror.worktree(moved) as worktree:
        assert (worktree / "b.txt").read_text() == "b\n"
    mirror.close()


def test_a_local_mirror_keeps_no_branch_refs_so_a_pruned_branch_cannot_break_it(
    tmp_path: Path, origin: Path
) -> None:
    git(origin, "branch", "old", "main")
    old = commit_files(origin, "old", {"old.txt": "old\n"})
    mirror = Mirror(tmp_path / "workdir", str(origin))
    assert mirror.fetch("old") == old
    assert git(mirror.path, "for-each-ref").strip() == ""
    # the repository deletes the branch and prunes its objects
    git(origin, "branch", "-D", "old")
    git(origin, "reflog", "expire", "--expire=now", "--all")
    git(origin, "gc", "--quiet", "--prune=now")
    assert git(origin, "cat-file", "-t", old, check=False).strip() == ""
    moved = commit_files(origin, "main", {"b.txt": "b\n"})
    assert mirror.fetch("main") == moved


@pytest.mark.parametrize(
    "hint",
    ["", "HEAD", "-x", "0" * 40, "main", "deadbeef"],
    ids=["empty", "ref-name", "option", "unknown", "branch", "short"],
)
def test_a_url_mirror_fetches_for_a_hint_that_is_not_its_fetched_head(
    tmp_path: Path, origin: Path, hint: str
) -> None:
    mirror = Mirror(tmp_path / "workdir", origin.resolve().as_uri())
    mirror.fetch("main")
    moved = commit_files(origin, "main", {"b.txt": "b\n"})
    assert mirror.resolve("main", hint) == moved
    assert mirrored_head(mirror) == moved


def test_a_blob_is_not_taken_for_a_commit(tmp_path: Path, origin: Path) -> None:
    mirror = Mirror(tmp_path / "workdir", origin.resolve().as_uri())
    head = mirror.fetch("main")
    blob = git(origin, "rev-parse", f"{head}:a.txt").strip()
    assert mirror.resolve("main", blob) == head


def test_a_url_mirror_fetches_a_new_head_once_and_reuses_a_known_one(
    tmp_path: Path, origin: Path
) -> None:
    mirror = Mirror(tmp_path / "workdir", origin.resolve().as_uri())
    first = mirror.resolve("main", "")
    assert not (mirror.path / "objects" / "info" / "alternates").exists()
    moved = commit_files(origin, "main", {"b.txt": "b\n"})
    # the recorded head is new to this host: fetched
    assert mirror.resolve("main", moved) == moved
    assert mirrored_head(mirror) == moved
    # a sibling ticket names the same head: no fetch, even though the branch moved on
    later = commit_files(origin, "main", {"c.txt": "c\n"})
    assert mirror.resolve("main", moved) == moved
    assert mirrored_head(mirror) == moved
    # a head that is not the one the last fetch brought means a fetch: the branch head
    assert mirror.resolve("main", first) == later
    assert mirrored_head(mirror) == later


def test_a_commit_whose_fetch_did_not_finish_is_not_taken(tmp_path: Path, origin: Path) -> None:
    """A fetch cut short may leave a commit without its tree: only a finished fetch counts."""
    mirror = Mirror(tmp_path / "workdir", origin.resolve().as_uri())
    mirror.resolve("main", "")
    moved = commit_files(origin, "main", {"b.txt": "b\n"})
    raw = git(origin, "cat-file", "commit", moved)
    written = git(mirror.path, "hash-object", "-w", "-t", "commit", "--stdin", input=raw.encode())
    assert written.strip() == moved  # the commit alone, as an interrupted unpack leaves it
    assert mirror.resolve("main", moved) == moved
    assert mirrored_head(mirror) == moved  # fetched
    with mirror.worktree(moved) as worktree:
        assert (worktree / "b.txt").read_text() == "b\n"
