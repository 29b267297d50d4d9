"""Which commit a ticket runs on: the head the run's record names, fetched only when missing.

A mirror of a local path borrows the repository's objects, so a head the
commit worker just wrote needs no fetch; a URL's mirror fetches once per new
head. Whether a fetch ran is read off the mirror's own branch ref, which only
a fetch moves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sage_tasks.gitops import Mirror
from tests.support.gitrepo import commit_files, git, make_repo

FILES: dict[str, str | bytes] = {"a.txt": "a\n"}


def mirrored_head(mirror: Mirror) -> str:
    return git(mirror.path, "rev-parse", "refs/heads/main").strip()


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin.git", FILES, None, bare=True)


def test_a_local_mirror_borrows_the_objects_and_takes_the_recorded_head_without_a_fetch(
    tmp_path: Path, origin: Path
) -> None:
    mirror = Mirror(tmp_path / "workdir", str(origin))
    first = mirror.resolve("main", "")  # nothing recorded yet: a fetch
    assert mirrored_head(mirror) == first
    alternates = (mirror.path / "objects" / "info" / "alternates").read_text().split()
    assert alternates == [str((origin / "objects").resolve())]
    moved = commit_files(origin, "main", {"b.txt": "b\n"})
    assert mirror.resolve("main", moved) == moved
    assert mirrored_head(mirror) == first  # no fetch ran
    with mirror.worktree(moved) as worktree:
        assert (worktree / "b.txt").read_text() == "b\n"
    mirror.close()


@pytest.mark.parametrize(
    "hint",
    ["", "HEAD", "-x", "0" * 40, "main", "deadbeef"],
    ids=["empty", "ref-name", "option", "unknown", "branch", "short"],
)
def test_a_hint_that_is_not_a_commit_of_the_mirror_means_a_fetch(
    tmp_path: Path, origin: Path, hint: str
) -> None:
    mirror = Mirror(tmp_path / "workdir", str(origin))
    mirror.fetch("main")
    moved = commit_files(origin, "main", {"b.txt": "b\n"})
    assert mirror.resolve("main", hint) == moved
    assert mirrored_head(mirror) == moved


def test_a_blob_is_not_taken_for_a_commit(tmp_path: Path, origin: Path) -> None:
    mirror = Mirror(tmp_path / "workdir", str(origin))
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
    # an older head the mirror holds is taken as recorded (the record is the run's view)
    assert mirror.resolve("main", first) == first
    assert mirror.resolve("main", later) == later
