"""The commit path on real repositories: one commit per ticket, exactly once, no work tree."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sage_tasks.core.index import State
from sage_tasks.errors import GitError, PatchRejected, RefMoved, RepositoryError
from sage_tasks.gitops import CommitTarget, Repository, ticket_commits
from tests.support.builders import ticket
from tests.support.gitrepo import (
    INDEX,
    changed_paths,
    commit_count,
    commit_files,
    git,
    make_patch,
    make_repo,
    read_file,
    read_index,
    ticket_state,
    work_tree_files,
)

LINES = "".join(f"line {i}\n" for i in range(1, 11))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    tickets = [ticket(t) for t in ("A", "B", "C", "D")]
    return make_repo(
        tmp_path / "repo",
        {"f.txt": LINES, "keep.txt": "keep\n"},
        {"version": "1.0", "tickets": tickets},
        bare=True,
    )


@pytest.fixture
def target(repo: Path) -> Iterator[CommitTarget]:
    git(repo, "branch", "run", "main")
    with CommitTarget(repo, "run") as t:
        yield t


@pytest.fixture
def patch_of(repo: Path, tmp_path: Path) -> Any:
    """A patch making ``changes`` against ``ref`` (default: the run branch)."""
    counter = itertools.count()

    def make(changes: dict[str, str | bytes | None], ref: str = "run", **kw: Any) -> bytes:
        return make_patch(repo, ref, changes, tmp_path / f"work{next(counter)}", **kw)

    return make


def edit_line(n: int, text: str) -> str:
    return "".join(f"{text}\n" if i == n else f"line {i}\n" for i in range(1, 11))


def test_a_completed_ticket_commits_its_patch_and_index_change_in_one_commit(
    repo: Path, target: CommitTarget, patch_of: Any
) -> None:
    head = git(repo, "rev-parse", "run").strip()
    patch = patch_of({"new.txt": "hello\n", "f.txt": edit_line(3, "THREE")})

    res = target.commit("A", "ticket A", "r1", patch, State.COMPLETED, None)

    assert res.state is State.COMPLETED and not res.already and res.conflicts == []
    assert git(repo, "rev-parse", "run").strip() == res.sha
    assert git(repo, "rev-parse", f"{res.sha}^").strip() == head
    assert changed_paths(repo, head, res.sha) == [INDEX, "f.txt", "new.txt"]
    assert read_file(repo, "run", "new.txt") == b"hello\n"
    assert ticket_state(repo, "run", "A")["state"] == "COMPLETED"
    message = git(repo, "log", "-1", "--format=%B", "run")
    assert message.splitlines()[0] == "A: ticket A"
    assert message.rstrip().endswith("Sage-Ticket: A\nSage-Run: r1")
    assert ticket_commits(repo, "run", "main") == [(res.sha, "A", "r1")]


def test_committing_the_same_ticket_and_run_twice_writes_one_commit(
    repo: Path, target: CommitTarget, patch_of: Any
) -> None:
    patch = patch_of({"new.txt": "hello\n"})
    first = target.commit("A", "ticket A", "r1", patch, State.COMPLETED, None)
    second = target.commit("A", "ticket A", "r1", patch, State.COMPLETED, None)
    failed_duplicate = target.commit("A", "ticket A", "r1", None, State.DEFERRED, "exit 1")

    assert second.already and second.sha == first.sha and second.state is State.COMPLETED
    assert failed_duplicate.already and failed_duplicate.sha == first.sha
    assert commit_count(repo, "main..run") == 1


def test_a_failed_ticket_commits_only_the_index_change_with_its_reason(
    repo: Path, target: CommitTarget
) -> None:
    head = git(repo, "rev-parse", "run").strip()
    reason = "exit 2; output ends: boom\n---\nKey: value"

    res = target.commit("B", "ticket B", "r1", None, State.DEFERRED, reason)

    assert res.state is State.DEFERRED and not res.already
    assert changed_paths(repo, head, res.sha) == [INDEX]
    item = ticket_state(repo, "run", "B")
    assert item["state"] == "DEFERRED" and item["deferred_reason"] == reason
    body = git(repo, "log", "-1", "--format=%B", "run")
    assert "boom" in body
    assert ticket_commits(repo, "run", "main") == [(res.sha, "B", "r1")]


def test_a_deferred_ticket_is_committed_once_per_run_and_completes_on_a_later_run(
    repo: Path, target: CommitTarget, patch_of: Any
) -> None:
    first = target.commit("B", "ticket B", "r1", None, State.DEFERRED, "exit 1")
    again = target.commit("B", "ticket B", "r1", None, State.DEFERRED, "exit 1")
    assert again.already and again.sha == first.sha and again.state is State.DEFERRED

    retried = target.commit(
        "B", "ticket B", "r2", patch_of({"b.txt": "b\n"}), State.COMPLETED, None
    )

    assert not retried.already and retried.state is State.COMPLETED
    item = ticket_state(repo, "run", "B")
    assert item["state"] == "COMPLETED" and "deferred_reason" not in item
    assert [c.run_id for c in ticket_commits(repo, "run", "main")] == ["r1", "r2"]


def test_siblings_editing_the_same_line_defer_the_second_with_the_path_in_its_reason(
    repo: Path, target: CommitTarget, patch_of: Any
) -> None:
    pa = patch_of({"f.txt": edit_line(5, "from A")})
    pb = patch_of({"f.txt": edit_line(5, "from B"), "b-only.txt": "b\n"})
    a = target.commit("A", "ticket A", "r1", pa, State.COMPLETED, None)

    b = target.commit("B", "ticket B", "r1", pb, State.COMPLETED, None)

    assert b.state is State.DEFERRED and b.conflicts == ["f.txt"]
    assert changed_paths(repo, a.sha, b.sha) == [INDEX]
    item = ticket_state(repo, "run", "B")
    assert item["state"] == "DEFERRED"
    assert item["deferred_reason"] == "merge conflict in: f.txt"
    assert "merge conflict in: f.txt" in git(repo, "log", "-1", "--format=%B", "run")


def test_a_conflict_to_be_run_again_commits_nothing_and_names_the_paths(
    repo: Path, target: CommitTarget, patch_of: Any
) -> None:
    pa = patch_of({"f.txt": edit_line(5, "from A")})
    pb = patch_of({"f.txt": edit_line(5, "from B")})
    a = target.commit("A", "ticket A", "r1", pa, State.COMPLETED, None)

    b = target.commit("B", "ticket B", "r1", pb, State.COMPLETED, None, rerun_on_conflict=True)

    assert b.rerun and b.conflicts == ["f.txt"] and b.sha == a.sha
    assert git(repo, "rev-parse", "run").strip() == a.sha
    assert ticket_state(repo, "run", "B")["state"] == "UNPROCESSED"


def test_edits_to_adjacent_lines_conflict_and_edits_far_apart_merge(
    repo: Path, target: CommitTarget, patch_of: Any
) -> None:
    pa = patch_of({"f.txt": edit_line(2, "A two")})
    pb = patch_of({"f.txt": edit_line(3, "B three")})
    pc = patch_of({"f.txt": edit_line(9, "C nine")})
    target.commit("A", "ticket A", "r1", pa, State.COMPLETED, None)

    assert target.commit("B", "ticket B", "r1", pb, State.COMPLETED, None).conflicts == ["f.txt"]
    merged = target.commit("C", "ticket C", "r1", pc, State.COMPLETED, None)

    assert merged.state is State.COMPLETED
    text = (read_file(repo, "run", "f.txt") or b"").decode()
    assert "A two\n" in text and "C nine\n" in text and "B three" not in text


def test_two_siblings_creating_the_same_file_defer_the_second(
    repo: Path, target: CommitTarget, patch_of: Any
) -> None:
    pa = patch_of({"same.txt": "A\n"})
    pb = patch_of({"same.txt": "B\n"})
    target.commit("A", "ticket A", "r1", pa, State.COMPLETED, None)
    res = target.commit("B", "ticket B", "r1", pb, State.COMPLETED, None)
    assert res.state is State.DEFERRED and res.conflicts == ["same.txt"]
    assert read_file(repo, "run", "same.txt") == b"A\n"


def test_an_executor_edit_of_the_ticket_index_is_not_taken(
    repo: Path, target: CommitTarget, patch_of: Any
) -> None:
    tampered = read_index(repo, "run")
    tampered["tickets"][1]["state"] = "COMPLETED"
    tampered["injected"] = True
    patch = patch_of({INDEX: repr(tampered), "a.txt": "a\n"}, exclude=())
    assert INDEX.encode() in patch

    res = target.commit("A", "ticket A", "r1", patch, State.COMPLETED, None)

    assert res.state is State.COMPLETED
    index = read_index(repo, "run")
    assert "injected" not in index
    assert [t["state"] for t in index["tickets"]] == [
        "COMPLETED",
        "UNPROCESSED",
        "UNPROCESSED",
        "UNPROCESSED",
    ]
    assert read_file(repo, "run", "a.txt") == b"a\n"


def test_a_branch_moved_before_the_ref_update_raises_ref_moved_and_writes_nothing(
    repo: Path, target: CommitTarget, patch_of: Any
) -> None:
    patch = patch_of({"a.txt": "a\n"})
    moved: list[str] = []

    def someone_else_commits() -> None:
        moved.append(commit_files(repo, "run", {"other.txt": "other\n"}, "other writer"))

    with pytest.raises(RefMoved):
        target.commit(
            "A",
            "ticket A",
            "r1",
            patch,
            State.COMPLETED,
            None,
            before_update_ref=someone_else_commits,
        )

    assert git(repo, "rev-parse", "run").strip() == moved[0]
    assert ticket_state(repo, "run", "A")["state"] == "UNPROCESSED"
    retry = target.commit("A", "ticket A", "r1", patch, State.COMPLETED, None)
    assert git(repo, "rev-parse", f"{retry.sha}^").strip() == moved[0]
    assert read_file(repo, "run", "other.txt") == b"other\n"
    assert read_file(repo, "run", "a.txt") == b"a\n"


def test_commits_after_another_writer_moved_the_branch_build_on_its_commit(
    repo: Path, target: CommitTarget, patch_of: Any
) -> None:
    target.commit("A", "ticket A", "r1", patch_of({"a.txt": "a\n"}), State.COMPLETED, None)
    other = commit_files(repo, "run", {"other.txt": "other\n", "keep.txt": None})
    pb = patch_of({"b.txt": "b\n"})

    res = target.commit("B", "ticket B", "r1", pb, State.COMPLETED, None)

    assert git(repo, "rev-parse", f"{res.sha}^").strip() == other
    files = git(repo, "ls-tree", "-r", "--name-only", "run").split()
    assert sorted(files) == [INDEX, "a.txt", "b.txt", "f.txt", "other.txt"]


def test_the_checked_out_target_branch_keeps_its_work_tree_index_and_local_changes(
    tmp_path: Path,
) -> None:
    repo = make_repo(
        tmp_path / "repo", {"f.txt": LINES}, {"version": "1.0", "tickets": [ticket("A")]}
    )
    (repo / "f.txt").write_text(edit_line(1, "local edit"))
    (repo / "untracked.txt").write_text("untracked\n")

    before = work_tree_files(repo)
    before_index = (repo / ".git" / "index").read_bytes()
    before_diff = git(repo, "diff")
    before_untracked = git(repo, "ls-files", "--others", "--exclude-standard")
    patch = make_patch(repo, "main", {"new.txt": "new\n"}, tmp_path / "work")

    with CommitTarget(repo, "main") as target:
        res = target.commit("A", "ticket A", "r1", patch, State.COMPLETED, None)

    assert git(repo, "rev-parse", "main").strip() == res.sha
    assert work_tree_files(repo) == before
    assert (repo / ".git" / "index").read_bytes() == before_index
    assert git(repo, "diff") == before_diff
    assert git(repo, "ls-files", "--others", "--exclude-standard") == before_untracked
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"


def test_unknown_fields_of_the_index_survive_the_commit(tmp_path: Path) -> None:
    index = {
        "version": "1.0",
        "meta": {"owner": "x", "z": [1, 2]},
        "tickets": [
            {
                "id": "A",
                "type": "feature",
                "title": "t",
                "state": "UNPROCESSED",
                "docs": ["d.md"],
                "acceptance_criteria": ["works"],
                "run": "true",
                "git": {"branch": "x"},
            }
        ],
        "trailing": "kept",
    }
    repo = make_repo(tmp_path / "repo", {}, index, bare=True)
    with CommitTarget(repo, "main") as target:
        target.commit("A", "t", "r1", None, State.DEFERRED, "why")
    after = read_index(repo, "main")
    assert list(after) == ["version", "meta", "tickets", "trailing"]
    assert after["meta"] == index["meta"] and after["trailing"] == "kept"
    item = after["tickets"][0]
    assert list(item) == [
        "id",
        "type",
        "title",
        "state",
        "docs",
        "acceptance_criteria",
        "run",
        "git",
        "deferred_reason",
    ]
    assert item["git"] == {"branch": "x"} and item["state"] == "DEFERRED"


def test_bad_ticket_ids_unknown_tickets_and_unsafe_patches_are_refused_without_a_commit(
    repo: Path, target: CommitTarget
) -> None:
    head = git(repo, "rev-parse", "run").strip()
    escape = (
        b"diff --git a/../x b/../x\nnew file mode 100644\n--- /dev/null\n+++ b/../x\n"
        b"@@ -0,0 +1 @@\n+x\n"
    )
    with pytest.raises(GitError, match="invalid ticket id"):
        target.commit("../A", "t", "r1", None, State.DEFERRED, "x")
    with pytest.raises(GitError, match="NOPE"):
        target.commit("NOPE", "t", "r1", None, State.DEFERRED, "x")
    with pytest.raises(GitError, match="invalid run id"):
        target.commit("A", "t", "r1\nSage-Ticket: B", None, State.DEFERRED, "x")
    with pytest.raises(PatchRejected):
        target.commit("A", "t", "r1", escape, State.COMPLETED, None)
    with pytest.raises(RepositoryError, match="nope"):
        CommitTarget(repo, "nope").commit("A", "t", "r1", None, State.DEFERRED, "x")
    assert git(repo, "rev-parse", "run").strip() == head


def test_every_kind_of_change_arrives_as_the_worker_made_it(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        "mod.txt": "old\n",
        "del.txt": "bye\n",
        "ren.txt": "stay the same\n" * 20,
        "bin.dat": bytes(range(256)),
        "run.sh": "#!/bin/sh\necho hi\n",
    }
    repo = make_repo(tmp_path / "repo", files, {"version": "1.0", "tickets": [ticket("A")]})
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(repo), str(work))
    (work / "mod.txt").write_text("new\n")
    (work / "del.txt").unlink()
    (work / "ren.txt").rename(work / "renamed.txt")
    (work / "bin.dat").write_bytes(bytes(reversed(range(256))) + b"\0\0")
    (work / "new.bin").write_bytes(b"\x00\xff" * 100)
    (work / "run.sh").chmod(0o755)
    (work / "sub dir").mkdir()
    (work / "sub dir" / "spaced näme.txt").write_text("x\n")
    from sage_tasks.gitops import capture_patch

    base = git(repo, "rev-parse", "main").strip()
    patch = capture_patch(work, base, exclude=[INDEX], max_bytes=1 << 20)
    assert b"rename from ren.txt" in patch.data and b"GIT binary patch" in patch.data

    git(repo, "branch", "run", "main")
    with CommitTarget(repo, "run") as target:
        res = target.commit("A", "t", "r1", patch.data, State.COMPLETED, None)

    assert res.state is State.COMPLETED

    def listing(where: Path, tree: str) -> list[str]:
        return [ln for ln in git(where, "ls-tree", "-r", tree).splitlines() if INDEX not in ln]

    assert listing(repo, res.sha) == listing(work, git(work, "write-tree").strip())
    assert "100755" in git(repo, "ls-tree", "run", "run.sh")


def test_a_host_without_a_git_identity_still_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": [ticket("A")]}, bare=True)
    git(repo, "config", "--unset", "user.name")
    git(repo, "config", "--unset", "user.email")
    git(repo, "config", "user.useConfigOnly", "true")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in (
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "EMAIL",
    ):
        monkeypatch.delenv(var, raising=False)
    with CommitTarget(repo, "main") as target:
        res = target.commit("A", "t", "r1", None, State.DEFERRED, "x")
    assert git(repo, "log", "-1", "--format=%an <%ae>", res.sha).strip() == (
        "sage-tasks <sage-tasks@localhost>"
    )


def test_one_open_repository_serves_several_branches(repo: Path, patch_of: Any) -> None:
    git(repo, "branch", "one", "main")
    git(repo, "branch", "two", "main")
    with Repository(repo) as shared:
        a = CommitTarget(shared, "one").commit(
            "A", "t", "r1", patch_of({"a": "1\n"}, "one"), State.COMPLETED, None
        )
        b = CommitTarget(shared, "two").commit(
            "A", "t", "r2", patch_of({"b": "2\n"}, "two"), State.COMPLETED, None
        )
    assert read_file(repo, a.sha, "a") == b"1\n" and read_file(repo, a.sha, "b") is None
    assert read_file(repo, b.sha, "b") == b"2\n" and read_file(repo, b.sha, "a") is None


def test_a_patch_moving_the_ticket_index_away_is_refused(repo: Path, target: CommitTarget) -> None:
    moved = (
        f"diff --git a/{INDEX} b/elsewhere.json\nsimilarity index 100%\n"
        f"rename from {INDEX}\nrename to elsewhere.json\n"
    ).encode()
    with pytest.raises(PatchRejected, match="ticket index"):
        target.commit("A", "t", "r1", moved, State.COMPLETED, None)


def test_a_branch_without_a_ticket_index_is_an_error(repo: Path, target: CommitTarget) -> None:
    commit_files(repo, "run", {INDEX: None})
    with pytest.raises(GitError, match="no ticket index"):
        target.commit("A", "t", "r1", None, State.DEFERRED, "x")
    with pytest.raises(RepositoryError, match="not a valid branch name"):
        CommitTarget(repo, "bad..name")


def test_a_forked_worker_process_gets_its_own_index_and_helpers(repo: Path, patch_of: Any) -> None:
    git(repo, "branch", "run", "main")
    pb, pc = patch_of({"b.txt": "b\n"}), patch_of({"c.txt": "c\n"})
    with Repository(repo) as shared:
        CommitTarget(shared, "run").commit(
            "A", "t", "r1", patch_of({"a.txt": "a\n"}), State.COMPLETED, None
        )
        pid = os.fork()
        if pid == 0:  # the child commits with the object it inherited
            code = 1
            try:
                CommitTarget(shared, "run").commit("B", "t", "r1", pb, State.COMPLETED, None)
                shared.close()
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        CommitTarget(shared, "run").commit("C", "t", "r1", pc, State.COMPLETED, None)
    files = git(repo, "ls-tree", "-r", "--name-only", "run").split()
    assert sorted(files) == [INDEX, "a.txt", "b.txt", "c.txt", "f.txt", "keep.txt"]
    assert [c.ticket_id for c in ticket_commits(repo, "run", "main")] == ["A", "B", "C"]


def test_a_private_index_removed_by_a_temp_cleaner_is_rebuilt(repo: Path, patch_of: Any) -> None:
    git(repo, "branch", "run", "main")
    with Repository(repo) as shared:
        target = CommitTarget(shared, "run")
        target.commit("A", "t", "r1", patch_of({"a.txt": "a\n"}), State.COMPLETED, None)
        shutil.rmtree(shared.index_file.parent)
        target.commit("B", "t", "r1", patch_of({"b.txt": "b\n"}), State.COMPLETED, None)
    files = git(repo, "ls-tree", "-r", "--name-only", "run").split()
    assert sorted(files) == [INDEX, "a.txt", "b.txt", "f.txt", "keep.txt"]


def test_an_index_path_with_dot_slash_names_the_same_file(repo: Path) -> None:
    with CommitTarget(repo, "main", "./" + INDEX) as target:
        res = target.commit("A", "t", "r1", None, State.DEFERRED, "x")
    assert changed_paths(repo, f"{res.sha}^", res.sha) == [INDEX]
