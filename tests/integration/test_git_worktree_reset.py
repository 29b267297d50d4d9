"""The short reset of a kept worktree: after a ticket whose patch was captured, only the
paths that differ from the next head are checked out, only folders that got new entries
are cleaned, and a ticket that added nothing is captured from tracked files alone.

Each test plays tickets as a ticket worker does (reset, command, capture) and checks
two things against a fresh clone: the next ticket sees exactly a clean checkout, and
each patch is byte for byte the one a fresh worktree and ``git add -A`` give. git's own
trace tells which way each reset went.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from sage_tasks.gitops import Mirror, capture_patch, worktree
from tests.support.gitrepo import INDEX, commit_files, make_repo
from tests.support.worktrees import (
    MAX,
    GitTrace,
    assert_clean_checkout,
    commit_patch,
    reference_patch,
    sh,
    ticket,
)

FILES: dict[str, str | bytes] = {
    "a.txt": "a\n",
    "gone.txt": "deleted by a ticket\n",
    "run.sh": "#!/bin/sh\necho hi\n",
    "sub/dir/f.txt": "f\n",
    "keep/inner.txt": "a folder a ticket turns into a file\n",
    "file2": "a file a ticket turns into a folder\n",
    "bin.dat": bytes(range(256)),
    ".gitignore": "*.log\nbuild/\n",
}

#: every kind of change a command makes
EVERYTHING = """
    echo changed > a.txt
    rm gone.txt
    chmod +x run.sh
    mv sub/dir/f.txt sub/dir/moved.txt
    echo new > new.txt
    mkdir -p new/nested/dir && echo x > new/nested/dir/x.txt
    echo ignored > debug.log
    mkdir -p build/deep && echo obj > build/deep/out.o
    mkdir -p empty/inner
    mkdir -p sub/dir/extra && echo e > sub/dir/extra/e.txt && echo i > sub/dir/extra/i.log
    ln -s a.txt link
    rm -r keep && echo now-a-file > keep
    rm file2 && mkdir file2 && echo in > file2/in.txt
    printf '\\000\\001' >> bin.dat
    echo '{"edited": "by the command"}' > .sage/tickets/index.json
"""

#: a ticket that only changes files in place: no folder gets an entry
IN_PLACE = """
    echo more >> a.txt
    printf 'x' >> sub/dir/f.txt
    chmod -x run.sh
    echo '{}' > .sage/tickets/index.json
"""


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin.git", FILES, None, bare=True)


@pytest.fixture
def trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GitTrace:
    """The git commands this test's worktrees see (commands in :func:`sh` are not traced)."""
    path = tmp_path / "git-trace.json"
    monkeypatch.setenv("GIT_TRACE2_EVENT", str(path))
    return GitTrace(path)


def full_resets(trace: GitTrace) -> list[str]:
    return [c for c in trace.commands() if c.startswith("checkout -q --force")]


def short_resets(trace: GitTrace) -> list[str]:
    return [c for c in trace.commands() if c.startswith("checkout --quiet --no-overlay")]


def cleans(trace: GitTrace) -> list[str]:
    return [c for c in trace.commands() if c.startswith("clean")]


@pytest.mark.parametrize("where", ["same-head", "new-head", "older-head"])
def test_after_a_captured_ticket_only_the_paths_that_differ_are_checked_out(
    mirror: Mirror,
    origin: Path,
    tmp_path: Path,
    fresh: Callable[[str], Path],
    trace: GitTrace,
    where: str,
) -> None:
    base = mirror.fetch("main")
    head = base
    if where == "older-head":
        head = commit_files(origin, "main", {"a.txt": "a2\n", "old/only.txt": "o\n"})
        assert mirror.fetch("main") == head
    patch = ticket(mirror, head, EVERYTHING)
    assert patch is not None and patch.data == reference_patch(origin, tmp_path, head, EVERYTHING)
    nxt = {
        "same-head": head,
        "new-head": commit_files(
            origin,
            "main",
            {"a.txt": "a3\n", "z/late/t.txt": "late\n", "sub/dir/f.txt": None, "run.sh": None},
        ),
        "older-head": base,
    }[where]
    mirror.fetch("main")
    trace.mark()
    with mirror.worktree(nxt) as path:
        assert_clean_checkout(path, nxt, fresh(nxt))
    assert short_resets(trace) and not full_resets(trace)


def test_tickets_after_tickets_stay_clean_and_their_patches_exact(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path], trace: GitTrace
) -> None:
    """Folders the branch and the commands add and remove, ticket after ticket (each
    ticket's patch committed, then a sibling's change)."""
    scripts = [
        EVERYTHING,
        IN_PLACE,
        "mkdir -p z/late/deeper && echo d > z/late/deeper/d.txt && echo l > z/x.log",
        "echo again >> z/late/deeper/d.txt && rm -r new",
        "rm -r z && echo flat > z",
        IN_PLACE,
        "echo back > a.txt && mkdir -p keep2 && echo k > keep2/k.txt",
    ]
    moves: list[dict[str, str | bytes | None]] = [
        {"z/late/t.txt": "late\n"},
        {"sub/dir/g.txt": "g\n"},
        {},
        {"z/late/t.txt": None, "top.txt": "top\n"},
        {"other/dir/o.txt": "o\n"},
        {},
        {"sub/dir/g.txt": None},
    ]
    head = mirror.fetch("main")
    ticket(mirror, head, "true")  # the worktree is made: every reset after is a short one
    trace.mark()
    for script, move in zip(scripts, moves, strict=True):
        with mirror.worktree(head) as path:
            assert_clean_checkout(path, head, fresh(head))
            mirror.captured(path)  # clean, as a capture of nothing leaves it
        patch = ticket(mirror, head, script)
        assert patch is not None
        assert patch.data == reference_patch(origin, tmp_path, head, script), script
        head = commit_patch(origin, patch.data) if patch.data else head
        if move:
            head = commit_files(origin, "main", move)
        assert mirror.fetch("main") == head
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))
    assert len(full_resets(trace)) == 0


def test_a_ticket_that_adds_nothing_is_captured_from_tracked_files_and_nothing_is_cleaned(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path], trace: GitTrace
) -> None:
    head = mirror.fetch("main")
    ticket(mirror, head, "true")  # the worktree is made: the next tickets reuse it
    trace.mark()
    patch = ticket(mirror, head, IN_PLACE)
    assert [c for c in trace.commands() if c.startswith("add")] == ["add -u"]
    assert patch is not None and patch.data == reference_patch(origin, tmp_path, head, IN_PLACE)
    trace.mark()
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))
    assert short_resets(trace) and cleans(trace) == []


ADDITIONS = {
    "at-the-root": "echo x > n.txt",
    "hidden": "echo x > .hidden",
    "deep": "echo x > sub/dir/n.txt",
    "a-folder": "mkdir sub/newdir",
    "a-link": "ln -s a.txt sub/l",
    "ignored": "echo x > sub/dir/n.log",
    "in-the-index-folder": "echo x > .sage/tickets/n.json",
    "times-set-back": "echo x > sub/dir/n.txt && touch -d 2001-01-01 sub/dir sub",
    "added-then-removed": "echo x > sub/t && rm sub/t",
    "a-folder-replaced": "mv sub/dir sub/old && mkdir sub/dir && mv sub/old/f.txt sub/dir/",
}


@pytest.mark.parametrize("addition", sorted(ADDITIONS))
def test_an_entry_added_anywhere_is_seen_and_cleaned_away(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path], addition: str
) -> None:
    head = mirror.fetch("main")
    ticket(mirror, head, "true")
    with mirror.worktree(head) as path:
        assert not mirror.may_hold_untracked(path)
        sh(path, ADDITIONS[addition])
        assert mirror.may_hold_untracked(path)
        patch = capture_patch(
            path, head, exclude=[INDEX], max_bytes=MAX, git_dir=mirror.git_dir(path)
        )
        mirror.captured(path)
    assert patch.data == reference_patch(origin, tmp_path, head, ADDITIONS[addition])
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))


def test_an_entry_added_just_after_a_reset_wrote_its_folder_is_seen(
    mirror: Mirror, fresh: Callable[[str], Path]
) -> None:
    """The reset writes ``sub/dir/f.txt`` back, then the command adds a file beside it at
    once: within the file system clock's tick, the folder's times may not move."""
    head = mirror.fetch("main")
    for i in range(25):
        ticket(mirror, head, f"echo {i} > sub/dir/f.txt")
        with mirror.worktree(head) as path:
            fd = os.open(path / "sub" / "dir" / "new.txt", os.O_CREAT | os.O_WRONLY, 0o644)
            os.close(fd)
            assert mirror.may_hold_untracked(path)
            mirror.captured(path)  # as if captured: the next reset is the short one
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))


def test_without_a_capture_the_reset_is_a_full_one(
    mirror: Mirror, fresh: Callable[[str], Path], trace: GitTrace
) -> None:
    head = mirror.fetch("main")
    ticket(mirror, head, "true")
    ticket(mirror, head, EVERYTHING, capture=False)  # the command failed: no patch taken
    trace.mark()
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))
    assert full_resets(trace) and not short_resets(trace)


def test_an_index_written_after_the_capture_means_a_full_reset(
    mirror: Mirror, fresh: Callable[[str], Path], trace: GitTrace
) -> None:
    head = mirror.fetch("main")
    with mirror.worktree(head) as path:
        sh(path, EVERYTHING)
        capture_patch(path, head, exclude=[INDEX], max_bytes=MAX, git_dir=mirror.git_dir(path))
        mirror.captured(path)
        sh(path, "echo late > a.txt && git add a.txt")  # after the capture: a stray writer
    trace.mark()
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))
    assert full_resets(trace) and not short_resets(trace)


def test_many_changed_paths_mean_a_full_reset(
    mirror: Mirror, fresh: Callable[[str], Path], trace: GitTrace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worktree, "KNOWN_RESET_MAX_PATHS", 2)
    head = mirror.fetch("main")
    ticket(mirror, head, "echo 1 > a.txt && echo 2 > sub/dir/f.txt && echo 3 > n.txt")
    trace.mark()
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))
    assert full_resets(trace) and not short_resets(trace)


def test_a_short_reset_that_leaves_the_index_wrong_is_followed_by_a_full_one(
    mirror: Mirror,
    fresh: Callable[[str], Path],
    trace: GitTrace,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    head = mirror.fetch("main")
    ticket(mirror, head, EVERYTHING)
    # the check after a short reset catches a list of paths that missed some
    monkeypatch.setattr(worktree, "outermost", lambda paths: paths[:1])
    trace.mark()
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))
    assert short_resets(trace) and full_resets(trace)
    assert "checking it out in full" in caplog.text
