"""Capturing a worktree's changes as a patch, and refusing patches that are unsafe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sage_tasks.errors import PatchRejected
from sage_tasks.gitops import capture_patch, check_patch
from sage_tasks.gitops.diff import parse_patch
from tests.support.builders import ticket
from tests.support.gitrepo import INDEX, checkout, git, make_repo


@pytest.fixture
def work(tmp_path: Path) -> Path:
    files: dict[str, str | bytes] = {
        "mod.txt": "old\n",
        "del.txt": "bye\n",
        "ren.txt": "the same text\n" * 20,
        "bin.dat": bytes(range(256)),
        "run.sh": "#!/bin/sh\n",
    }
    repo = make_repo(tmp_path / "repo", files, {"version": "1.0", "tickets": [ticket("A")]})
    return checkout(repo, "main", tmp_path / "work")


def base_of(work: Path) -> str:
    return git(work, "rev-parse", "HEAD").strip()


def capture(work: Path, max_bytes: int = 1 << 20) -> bytes:
    return capture_patch(work, base_of(work), exclude=[INDEX], max_bytes=max_bytes).data


def test_new_modified_deleted_renamed_binary_and_mode_changes_are_captured(work: Path) -> None:
    base = base_of(work)
    (work / "new.txt").write_text("new\n")
    (work / "mod.txt").write_text("changed\n")
    (work / "del.txt").unlink()
    (work / "ren.txt").rename(work / "moved.txt")
    (work / "bin.dat").write_bytes(bytes(reversed(range(256))))
    (work / "run.sh").chmod(0o755)

    patch = capture_patch(work, base, exclude=[INDEX], max_bytes=1 << 20)

    assert sorted(patch.paths) == [
        "bin.dat",
        "del.txt",
        "mod.txt",
        "moved.txt",
        "new.txt",
        "ren.txt",
        "run.sh",
    ]
    assert patch.size == len(patch.data)
    data = patch.data
    for marker in (
        b"new file mode 100644",
        b"deleted file mode 100644",
        b"rename from ren.txt",
        b"rename to moved.txt",
        b"GIT binary patch",
        b"old mode 100644",
        b"new mode 100755",
    ):
        assert marker in data, marker
    # it applies to the base commit and gives the worker's tree
    fresh = checkout(work, base, work.parent / "fresh")
    git(fresh, "apply", "--index", "--binary", input=data)
    assert git(fresh, "write-tree") == git(work, "write-tree")


def test_changes_committed_by_the_executor_are_captured_too(work: Path) -> None:
    base = base_of(work)
    (work / "c.txt").write_text("committed\n")
    git(work, "add", "c.txt")
    git(work, "commit", "-q", "-m", "executor commit")
    patch = capture_patch(work, base, exclude=[INDEX], max_bytes=1 << 20)
    assert patch.paths == ["c.txt"]


def test_an_unchanged_worktree_gives_an_empty_patch(work: Path) -> None:
    patch = capture_patch(work, base_of(work), exclude=[INDEX], max_bytes=1 << 20)
    assert patch.data == b"" and patch.paths == [] and patch.empty


def test_edits_to_the_ticket_index_and_ignored_files_are_left_out(work: Path) -> None:
    (work / INDEX).write_text('{"tickets": []}\n')
    (work / ".gitignore").write_text("build/\n")
    (work / "build").mkdir()
    (work / "build" / "out.o").write_bytes(b"\0")
    assert capture_patch(work, base_of(work), exclude=[INDEX], max_bytes=1 << 20).paths == [
        ".gitignore"
    ]


def test_a_patch_over_the_size_limit_is_refused_with_its_size(work: Path) -> None:
    (work / "big.txt").write_text("x" * 5000 + "\n")
    size = len(capture(work))
    with pytest.raises(PatchRejected, match=rf"^patch is {size} bytes, over the limit of 1000$"):
        capture(work, max_bytes=1000)


def test_a_symlink_out_of_the_tree_is_refused_and_an_inner_one_is_kept(work: Path) -> None:
    os.symlink("mod.txt", work / "inner-link")
    assert capture(work).count(b"new file mode 120000") == 1
    os.symlink("/etc/passwd", work / "outer-link")
    with pytest.raises(PatchRejected, match="outer-link"):
        capture(work)


def _new_file(path: str, line: str = "x") -> str:
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
        f"@@ -0,0 +1 @@\n+{line}\n"
    )


def _symlink(path: str, target: str) -> str:
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 120000\n--- /dev/null\n+++ b/{path}\n"
        f"@@ -0,0 +1 @@\n+{target}\n\\ No newline at end of file\n"
    )


SAFE = [
    _new_file("ok.txt"),
    _new_file("dir/.github/workflow.yml"),
    _symlink("docs/link", "README.md"),
    _symlink("x/b", "c/d"),
    'diff --git "a/sp ac\\303\\251.txt" "b/sp ac\\303\\251.txt"\nnew file mode 100644\n'
    '--- /dev/null\n+++ "b/sp ac\\303\\251.txt"\n@@ -0,0 +1 @@\n+x\n',
    "diff --git a/x.sh b/x.sh\nold mode 100644\nnew mode 100755\n",
]

UNSAFE = {
    "climbs with ..": _new_file("../x"),
    "climbs inside": _new_file("a/../../x"),
    "writes .git/config": _new_file(".git/config"),
    "writes .GIT in a subdir": _new_file("sub/.GIT/hooks/pre-commit"),
    "writes git~1": _new_file("git~1/config"),
    "absolute": "diff --git a//etc/passwd b//etc/passwd\n--- a//etc/passwd\n+++ b//etc/passwd\n"
    "@@ -1 +1 @@\n-root\n+evil\n",
    "quoted ..": 'diff --git "a/..\\057x" "b/..\\057x"\nnew file mode 100644\n--- /dev/null\n'
    '+++ "b/..\\057x"\n@@ -0,0 +1 @@\n+x\n',
    "rename into .git": "diff --git a/x b/.git/hooks/post-checkout\nsimilarity index 100%\n"
    "rename from x\nrename to .git/hooks/post-checkout\n",
    "symlink absolute": _symlink("link", "/etc"),
    "symlink climbs": _symlink("link", "../../outside"),
    "symlink into .git": _symlink("link", ".git/config"),
    "write through a new symlink": _symlink("lnk", "somewhere") + _new_file("lnk/file"),
    "--- names disagree": "diff --git a/ok b/ok\n--- a/ok\n+++ b/../evil\n@@ -1 +1 @@\n-a\n+b\n",
    "traditional diff smuggled": (
        _new_file("ok.txt") + "--- a/../x\n+++ b/../x\n@@ -0,0 +1 @@\n+x\n"
    ),
    "text before the first section": "From: someone\n" + _new_file("ok.txt"),
    "submodule": "diff --git a/sub b/sub\nnew file mode 160000\nindex 0000000..1234567\n"
    "--- /dev/null\n+++ b/sub\n@@ -0,0 +1 @@\n+Subproject commit 1234567\n",
    "hunk longer than it says": _new_file("ok.txt") + "+extra\n",
    "no trailing newline": _new_file("ok.txt").rstrip("\n"),
}


@pytest.mark.parametrize("patch", SAFE)
def test_safe_patches_pass_and_name_their_paths(patch: str) -> None:
    paths = check_patch(patch.encode())
    assert paths and all(not p.startswith(("/", "a/", "b/")) for p in paths)


@pytest.mark.parametrize("patch", list(UNSAFE.values()), ids=list(UNSAFE))
def test_unsafe_patches_are_refused(patch: str) -> None:
    with pytest.raises(PatchRejected):
        check_patch(patch.encode())


def test_quoted_and_renamed_paths_are_read_as_git_writes_them() -> None:
    files = parse_patch(SAFE[4].encode())
    assert files[0].new_path == "sp acé.txt" and files[0].old_path is None
    renamed = parse_patch(
        b"diff --git a/x y b/z w\nsimilarity index 100%\nrename from x y\nrename to z w\n"
    )
    assert (renamed[0].old_path, renamed[0].new_path) == ("x y", "z w")
    assert check_patch(b"") == []


def _rewrites() -> list[tuple[bytes, bytes]]:
    import random

    rng = random.Random(7)
    lines = [f"line {i}\n".encode() for i in range(40)]
    cases = [
        (b"a\n", b"b\n"),
        (b"".join(lines), b"".join([*lines[:20], b"changed\n", *lines[21:]])),
        (b"".join(lines), b"".join(lines[:1] + lines[2:])),
        (b"".join(lines), b"".join([b"first\n", *lines, b"last\n"])),
        (b"x\r\ny\r\n", b"x\r\nz\r\n"),
        (b"same\nsame\nsame\n", b"same\nsame\nsame\nsame\n"),
        (b"no newline at end", b"{}\n"),
        (b"{}\n", b"binary \0 content\n"),
        (bytes(range(256)) * 3, b"text\n"),
    ]
    for _ in range(12):
        old = [rng.choice(lines) for _ in range(rng.randint(1, 30))]
        new = list(old)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(new) + 1)
            if rng.random() < 0.5 and pos < len(new):
                del new[pos]
            else:
                new.insert(pos, rng.choice(lines))
        cases.append((b"".join(old), b"".join(new) or b"\n"))
    return cases


def test_the_index_rewrite_patch_turns_the_old_blob_into_the_new_one_exactly(
    tmp_path: Path,
) -> None:
    from sage_tasks.gitops.replacement import replace_file_patch

    repo = make_repo(tmp_path / "repo", {}, None, bare=True)
    env = {"GIT_INDEX_FILE": str(tmp_path / "index")}
    for old, new in _rewrites():
        old_id = git(repo, "hash-object", "-w", "--stdin", input=old).strip()
        new_id = git(repo, "hash-object", "--stdin", input=new).strip()
        git(repo, "update-index", "--add", "--cacheinfo", f"100644,{old_id},f.json", env=env)
        patch = replace_file_patch("f.json", old_id, new_id, old, new)
        assert check_patch(patch) == ["f.json"]
        git(repo, "apply", "--cached", input=patch, env=env)
        assert git(repo, "ls-files", "-s", "f.json", env=env).split()[1] == new_id, (old, new)
