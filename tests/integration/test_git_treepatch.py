"""Patches applied to trees in process: the tree ``git apply`` makes, or git is left to do it.

Each patch is made by git in a work tree (``git diff --binary --full-index``,
as a ticket worker captures it); the in-process tree must be the one
``git apply --cached`` gives on a private index, and ``git fsck --strict``
must accept every object written.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sage_tasks.core.index import State
from sage_tasks.gitops import CommitTarget, Repository
from sage_tasks.gitops.diff import parse_patch
from tests.support.builders import ticket
from tests.support.gitrepo import INDEX, git, index_bytes, make_repo, ticket_state

INDEX_DOC = {"version": "1.0", "tickets": [ticket("A"), ticket("B")]}
A_TXT = "one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\n"
FILES: dict[str, str | bytes] = {
    "a.txt": A_TXT,
    "crlf.txt": "one\r\ntwo\r\n",
    "no-eol.txt": "first\nlast",
    "lone/only.txt": "alone\n",
    "d/e/f.txt": "deep\n",
    "d/e-f.txt": "a name that sorts between d/e and d/e/",
    "run.sh": "#!/bin/sh\necho hi\n",
}


def edit(work: Path) -> None:
    """Every kind of change the in-process path takes on."""
    a = (work / "a.txt").read_text().replace("two\n", "TWO\n").replace("nine\n", "NINE\n")
    (work / "a.txt").write_text(a + "eleven\n")
    (work / "crlf.txt").write_bytes(b"one\r\ntwo changed\r\n")
    (work / "no-eol.txt").write_text("first\nlast, still without a newline")
    (work / "lone/only.txt").unlink()
    (work / "d/e/g.txt").write_text("a new file beside another\n")
    (work / "new/folder/deep.txt").parent.mkdir(parents=True)
    (work / "new/folder/deep.txt").write_text("a new file in new folders\n")
    (work / "d/e.txt").write_text("a file named like a folder's prefix\n")
    (work / "run.sh").chmod(0o755)
    (work / "empty.txt").write_text("")
    (work / "link").symlink_to("a.txt")


def captured(repo: Path, tmp: Path, change: object = edit) -> bytes:
    work = tmp / "work"
    git(tmp, "clone", "-q", str(repo), str(work))
    assert callable(change)
    change(work)
    git(work, "add", "-A")
    return git(work, "diff", "--cached", "--binary", "--full-index", "HEAD").encode(
        "utf-8", "surrogateescape"
    )


def git_apply(repo: Path, tree: str, patch: bytes, tmp: Path) -> str:
    env = {"GIT_INDEX_FILE": str(tmp / "git-index")}
    git(repo, "read-tree", tree, env=env)
    git(repo, "apply", "--cached", input=patch, env=env)
    return git(repo, "write-tree", env=env).strip()


@pytest.mark.parametrize("fmt", ["sha1", "sha256"])
def test_a_patch_applied_in_process_gives_the_tree_git_apply_gives(
    tmp_path: Path, fmt: str
) -> None:
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", f"--object-format={fmt}", "-b", "main", str(repo))
    for name, content in {**FILES, INDEX: index_bytes(INDEX_DOC)}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(content.encode() if isinstance(content, str) else content)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    patch = captured(repo, tmp_path)
    tree = git(repo, "rev-parse", "main^{tree}").strip()
    with Repository(repo) as r:
        ours = r.patcher.patch_tree(tree, patch, parse_patch(patch), {})
    assert ours is not None
    assert ours == git_apply(repo, tree, patch, tmp_path)
    git(repo, "fsck", "--strict", "--no-dangling")


def test_a_commit_on_a_shared_repository_writes_group_readable_objects(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", FILES, INDEX_DOC, bare=True)
    git(repo, "config", "core.sharedRepository", "group")
    patch = captured(repo, tmp_path)
    with CommitTarget(repo, "main") as target:
        res = target.commit("A", "t", "r1", patch, State.COMPLETED)
    assert res.state is State.COMPLETED
    assert ticket_state(repo, "main", "A")["state"] == "COMPLETED"
    blob = git(repo, "rev-parse", "main:new/folder/deep.txt").strip()
    mode = (repo / "objects" / blob[:2] / blob[2:]).stat().st_mode
    assert mode & 0o040, "objects of a group-shared repository are group-readable"
    git(repo, "fsck", "--strict", "--no-dangling")


def test_a_file_that_moved_on_since_the_base_is_left_to_git_which_merges_it(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", FILES, INDEX_DOC, bare=True)

    def second_line(work: Path) -> None:
        (work / "a.txt").write_text(A_TXT.replace("two", "TWO"))

    patch = captured(repo, tmp_path, second_line)
    with CommitTarget(repo, "main") as target:
        other = A_TXT.replace("nine", "NINE")
        first = tmp_path / "first"
        first.mkdir()
        other_patch = captured(repo, first, lambda w: (w / "a.txt").write_text(other))
        target.commit("B", "t", "r1", other_patch, State.COMPLETED)
        head = git(repo, "rev-parse", "main^{tree}").strip()
        assert target.repo.patcher.patch_tree(head, patch, parse_patch(patch), {}) is None
        res = target.commit("A", "t", "r1", patch, State.COMPLETED)
    assert res.state is State.COMPLETED
    text = git(repo, "cat-file", "blob", "main:a.txt")
    assert "TWO" in text and "NINE" in text


def test_a_patch_whose_context_is_not_at_its_line_is_left_to_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", FILES, INDEX_DOC, bare=True)
    patch = captured(repo, tmp_path)
    tree = git(repo, "rev-parse", "main^{tree}").strip()
    forged = re.sub(rb"@@ -1,(\d+) \+1,(\d+) @@", rb"@@ -2,\1 +2,\2 @@", patch, count=1)
    assert forged != patch
    with Repository(repo) as r:
        assert r.patcher.patch_tree(tree, forged, parse_patch(forged), {}) is None


def test_the_ticket_index_rides_in_the_same_tree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", FILES, INDEX_DOC, bare=True)
    patch = captured(repo, tmp_path)
    tree = git(repo, "rev-parse", "main^{tree}").strip()
    with Repository(repo) as r:
        ours = r.patcher.patch_tree(tree, patch, parse_patch(patch), {INDEX: b"[]\n"})
    assert ours is not None
    assert git(repo, "cat-file", "blob", f"{ours}:{INDEX}") == "[]\n"
    assert git(repo, "cat-file", "blob", f"{ours}:d/e/g.txt") == "a new file beside another\n"
