"""Preparing a run's branch and reading the index at a ref, on bare and non-bare repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

from sage_tasks.errors import RepositoryError
from sage_tasks.gitops import (
    branch_head,
    prepare_branch,
    read_index_at,
    repo_root,
    resolve_ref,
    working_copy_differs,
)
from tests.support.builders import ticket
from tests.support.gitrepo import INDEX, commit_files, git, index_bytes, make_repo

INDEX_DATA = {"version": "1.0", "tickets": [ticket("A")]}


@pytest.fixture(params=[False, True], ids=["non-bare", "bare"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"a.txt": "a\n"}, INDEX_DATA, bare=request.param)


def test_a_new_branch_is_created_at_head_and_kept_when_the_run_resumes(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD").strip()

    info = prepare_branch(repo, "sage/run-1", None, allow_main=False)
    assert (info.branch, info.head_sha, info.created) == ("sage/run-1", head, True)
    moved = commit_files(repo, "sage/run-1", {"b.txt": "b\n"})

    again = prepare_branch(repo, "sage/run-1", "main~0", allow_main=False)
    assert (again.head_sha, again.created) == (moved, False)
    assert branch_head(repo, "sage/run-1") == moved


def test_a_branch_starts_at_the_given_base(repo: Path) -> None:
    first = git(repo, "rev-parse", "main").strip()
    commit_files(repo, "main", {"later.txt": "x\n"})
    info = prepare_branch(repo, "feature", first[:10], allow_main=False)
    assert info.head_sha == first and info.created


def test_main_and_master_are_refused_unless_allowed(repo: Path) -> None:
    head = git(repo, "rev-parse", "main").strip()
    for name in ("main", "master"):
        with pytest.raises(RepositoryError, match=name) as err:
            prepare_branch(repo, name, None, allow_main=False)
        assert err.value.exit_code == 2
    info = prepare_branch(repo, "main", None, allow_main=True)
    assert (info.head_sha, info.created) == (head, False)


@pytest.mark.parametrize("name", ["bad..name", "-x", "a b", "x.lock", "HEAD", "a:b", ""])
def test_invalid_branch_names_are_refused(repo: Path, name: str) -> None:
    with pytest.raises(RepositoryError, match="not a valid branch name"):
        prepare_branch(repo, name, None, allow_main=False)


def test_an_unknown_base_is_refused_naming_it(repo: Path) -> None:
    with pytest.raises(RepositoryError, match="no-such-ref"):
        prepare_branch(repo, "x", "no-such-ref", allow_main=False)
    assert branch_head(repo, "x") is None
    with pytest.raises(RepositoryError, match="nope"):
        resolve_ref(repo, "nope")


def test_preparing_a_branch_touches_no_work_tree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, INDEX_DATA)
    (repo / "a.txt").write_text("local\n")
    index_before = (repo / ".git" / "index").read_bytes()
    prepare_branch(repo, "run", None, allow_main=False)
    assert (repo / "a.txt").read_text() == "local\n"
    assert (repo / ".git" / "index").read_bytes() == index_before
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"


def test_the_index_is_read_at_a_ref_and_missing_is_none(repo: Path) -> None:
    assert read_index_at(repo, "main", INDEX) == index_bytes(INDEX_DATA)
    assert read_index_at(repo, "main", "no/such.json") is None
    with pytest.raises(RepositoryError, match="nope"):
        read_index_at(repo, "nope", INDEX)


def test_a_working_copy_edit_of_the_index_is_noticed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {}, INDEX_DATA)
    assert not working_copy_differs(repo, "main", INDEX)
    (repo / INDEX).write_text("{}\n")
    assert working_copy_differs(repo, "main", INDEX)
    (repo / INDEX).unlink()
    assert working_copy_differs(repo, "main", INDEX)
    bare = make_repo(tmp_path / "bare", {}, INDEX_DATA, bare=True)
    assert not working_copy_differs(bare, "main", INDEX)


def test_the_index_read_already_is_compared_with_the_working_copy(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {}, INDEX_DATA)
    committed = read_index_at(repo, "main", INDEX)
    assert committed is not None
    assert not working_copy_differs(repo, "main", INDEX, committed)
    assert working_copy_differs(repo, "main", INDEX, committed + b" ")
    (repo / INDEX).write_text("{}\n")
    assert working_copy_differs(repo, "main", INDEX, committed)


def test_the_repository_root_is_found_from_inside_and_a_non_repo_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"d/e.txt": "x\n"}, INDEX_DATA)
    assert repo_root(repo / "d") == repo.resolve()
    assert repo_root(repo / ".git") == repo.resolve()
    bare = make_repo(tmp_path / "bare", {}, INDEX_DATA, bare=True)
    assert repo_root(bare) == bare.resolve()
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RepositoryError, match="not a git repository"):
        repo_root(plain)
    with pytest.raises(RepositoryError, match="not a directory"):
        repo_root(tmp_path / "missing")


def test_an_index_path_written_with_dot_slash_is_read_all_the_same(repo: Path) -> None:
    assert read_index_at(repo, "main", "./" + INDEX) == index_bytes(INDEX_DATA)
