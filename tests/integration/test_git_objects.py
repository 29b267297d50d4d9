"""Objects the commit worker writes itself: exactly what git would write, or git writes them.

The usual commit (a ticket's new state, no patch) is written without a git
process; each test compares with git's own plumbing on the same repository,
and ``git fsck --strict`` checks every object.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from sage_tasks.core.index import State
from sage_tasks.gitops import CommitTarget, Repository
from tests.support.builders import ticket
from tests.support.gitrepo import GIT_ENV, INDEX, git, make_repo, read_index, ticket_state

INDEX_DOC = {"version": "1.0", "tickets": [ticket(t) for t in ("A", "B", "C")]}
FILES: dict[str, str | bytes] = {
    "a.txt": "a\n",
    "z/deep/er/file.txt": "deep\n",
    ".sage/other.json": "{}\n",
    ".sage/tickets/zz.txt": "after the index\n",
    ".sage/tickets/index.json.bak": "a name sorting after the index\n",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", FILES, INDEX_DOC, bare=True)


def git_tree_with(repo: Path, tree: str, path: str, content: bytes, tmp: Path) -> str:
    """The tree git makes for ``tree`` with ``path`` holding ``content`` (a private index)."""
    env = {"GIT_INDEX_FILE": str(tmp / "git-index")}
    blob = git(repo, "hash-object", "-w", "--stdin", input=content).strip()
    git(repo, "read-tree", tree, env=env)
    mode = git(repo, "ls-tree", tree, "--", path).split()[0]
    git(repo, "update-index", "--cacheinfo", f"{mode},{blob},{path}", env=env)
    return git(repo, "write-tree", env=env).strip()


def test_a_file_replaced_in_a_tree_gives_the_tree_git_gives(repo: Path, tmp_path: Path) -> None:
    tree = git(repo, "rev-parse", "main^{tree}").strip()
    with Repository(repo) as r:
        for path in (INDEX, "a.txt", "z/deep/er/file.txt"):
            content = f"new content of {path}\n".encode()
            assert r.with_blob(tree, path, content) == git_tree_with(
                repo, tree, path, content, tmp_path
            )
    git(repo, "fsck", "--strict", "--no-dangling")


def test_an_executable_file_keeps_its_mode(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"run.sh": "#!/bin/sh\n"}, INDEX_DOC, bare=True)
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(repo), str(work))
    (work / "run.sh").chmod((work / "run.sh").stat().st_mode | stat.S_IXUSR)
    git(work, "commit", "-qam", "exec")
    git(work, "push", "-q", "origin", "HEAD:main")
    tree = git(repo, "rev-parse", "main^{tree}").strip()
    with Repository(repo) as r:
        new = r.with_blob(tree, "run.sh", b"#!/bin/sh\necho\n")
    assert new == git_tree_with(repo, tree, "run.sh", b"#!/bin/sh\necho\n", tmp_path)
    assert git(repo, "ls-tree", str(new), "run.sh").split()[0] == "100755"


@pytest.mark.parametrize("path", ["missing.txt", "z/deep", "z/deep/er/file.txt/x", "a.txt/x"])
def test_a_path_that_is_not_a_file_of_the_tree_is_left_to_git(repo: Path, path: str) -> None:
    tree = git(repo, "rev-parse", "main^{tree}").strip()
    with Repository(repo) as r:
        assert r.with_blob(tree, path, b"x\n") is None


def test_a_commit_written_here_is_the_commit_git_writes(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, value in GIT_ENV.items():
        monkeypatch.setenv(var, value)  # the identity the git calls below use
    tree = git(repo, "rev-parse", "main^{tree}").strip()
    parent = git(repo, "rev-parse", "main").strip()
    message = b"A: title\n\nSage-Ticket: A\nSage-Run: r1\n"
    with Repository(repo) as r:
        before = int(time.time())
        sha = r.commit_tree(tree, parent, message)
    raw = git(repo, "cat-file", "commit", sha)
    stamp = raw.split("\ncommitter ", 1)[1].split("\n", 1)[0].rsplit(" ", 2)[1:]
    assert before <= int(stamp[0]) <= before + 5
    date = " ".join(stamp)
    by_git = git(
        repo,
        "commit-tree",
        tree,
        "-p",
        parent,
        input=message,
        env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date},
    ).strip()
    assert sha == by_git
    git(repo, "fsck", "--strict", "--no-dangling")


def test_commits_with_an_encoding_or_dates_from_the_environment_are_written_by_git(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git(repo, "config", "i18n.commitEncoding", "ISO-8859-1")
    git(repo, "branch", "run", "main")
    with CommitTarget(repo, "run") as target:
        encoded = target.commit("A", "t", "r1", None, State.COMPLETED)
    assert "\nencoding ISO-8859-1\n" in git(repo, "cat-file", "commit", encoded.sha)
    git(repo, "config", "--unset", "i18n.commitEncoding")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "1600000000 +0200")
    with CommitTarget(repo, "run") as target:
        dated = target.commit("B", "t", "r1", None, State.COMPLETED)
    assert git(repo, "log", "-1", "--format=%ct", dated.sha).strip() == "1600000000"
    assert ticket_state(repo, "run", "B")["state"] == "COMPLETED"


def test_state_only_commits_through_the_whole_path_leave_a_sound_repository(repo: Path) -> None:
    git(repo, "branch", "run", "main")
    with CommitTarget(repo, "run") as target:
        for tid in ("A", "B"):
            target.commit(tid, "t", "r1", None, State.COMPLETED)
        target.commit("C", "t", "r1", None, State.DEFERRED, "exit code 1")
    index = read_index(repo, "run")
    assert [t.get("state") for t in index["tickets"]] == ["COMPLETED", "COMPLETED", "DEFERRED"]
    changed = git(repo, "diff", "--name-only", "main", "run").split()
    assert changed == [INDEX]
    assert git(repo, "rev-list", "--count", "main..run").strip() == "3"
    git(repo, "fsck", "--strict", "--no-dangling")


def test_a_sha256_repository_commits_through_git(tmp_path: Path) -> None:
    repo = tmp_path / "repo256"
    git(tmp_path, "init", "-q", "--object-format=sha256", "-b", "main", str(repo))
    (repo / ".sage" / "tickets").mkdir(parents=True)
    doc = {"version": "1.0", "tickets": [{"id": "A", "title": "t", "run": "true"}]}
    (repo / INDEX).write_text(json.dumps(doc, indent=2) + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    with CommitTarget(repo, "main") as target:
        res = target.commit("A", "t", "r1", None, State.COMPLETED)
    assert len(res.sha) == 64
    assert ticket_state(repo, "main", "A")["state"] == "COMPLETED"
    git(repo, "fsck", "--strict", "--no-dangling")


def test_a_shared_repository_gets_its_objects_from_git_with_the_group_s_permissions(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", FILES, INDEX_DOC, bare=True)
    git(repo, "config", "core.sharedRepository", "group")
    git(repo, "branch", "run", "main")
    # Pack what the set-up wrote (with the default umask) and drop its loose
    # object folders, so every folder the commit needs is one git makes now.
    git(repo, "repack", "-adq")
    git(repo, "prune-packed")
    assert not [d for d in (repo / "objects").iterdir() if len(d.name) == 2]
    with CommitTarget(repo, "run") as target:
        res = target.commit("A", "t", "r1", None, State.COMPLETED)
    obj_dir = repo / "objects" / res.sha[:2]
    assert obj_dir.is_dir(), "the commit object was expected loose"
    assert obj_dir.stat().st_mode & 0o070 == 0o070, oct(obj_dir.stat().st_mode)
    git(repo, "fsck", "--strict", "--no-dangling")
