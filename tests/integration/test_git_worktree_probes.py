"""Adversarial probes of kept worktrees (short reset, folder check, adoption).

Each probe plays tickets as the ticket runner does (reset, command, capture, the
mirror told of the capture) and compares with a fresh clone: the patch must be the
one a fresh clone, the same command and ``git add -A`` give, and the next ticket
must see exactly a clean checkout of its head.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from sage_tasks.errors import RepositoryError
from sage_tasks.gitops import Mirror
from sage_tasks.gitops.slotrepo import STALE, tidy_repository
from sage_tasks.work.executor import run_command, survivors
from tests.integration.test_git_worktree_reset import EVERYTHING, FILES
from tests.support.gitrepo import commit_files, git, make_repo
from tests.support.worktrees import (
    assert_clean_checkout,
    commit_patch,
    reference_patch,
    sh,
    take_patch,
    ticket,
)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin.git", FILES, None, bare=True)


def warm(mirror: Mirror) -> str:
    """The branch head, with the worktree made and captured once (the next reset is short)."""
    head = mirror.fetch("main")
    ticket(mirror, head, "true")
    return head


# -- the patch of a ticket that (by the folders' times) added nothing -------------------

ROOT_REPLACEMENTS = {
    "file-to-folder": "rm a.txt && mkdir a.txt && echo x > a.txt/x",
    "file-to-deep-folder": "rm run.sh && mkdir -p run.sh/d/e && echo x > run.sh/d/e/x",
    "ignore-file-to-folder": "rm .gitignore && mkdir .gitignore && echo x > .gitignore/x",
}


@pytest.mark.parametrize("case", sorted(ROOT_REPLACEMENTS))
def test_a_root_file_replaced_by_a_folder_travels_whole(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path], case: str
) -> None:
    """The root's names are the same (``a.txt`` is still there, now a folder) and no
    tracked folder's times moved: the folder check says "nothing added", the capture
    runs ``git add -u`` and the files in the new folder are lost from the patch."""
    head = warm(mirror)
    script = ROOT_REPLACEMENTS[case]
    patch = ticket(mirror, head, script)
    assert patch is not None
    assert patch.data == reference_patch(origin, tmp_path, head, script)
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))


def test_a_root_file_replaced_by_a_folder_is_cleaned_when_the_head_keeps_it(
    mirror: Mirror, origin: Path, fresh: Callable[[str], Path]
) -> None:
    """As above, and the next head deletes ``a.txt`` too (what the ticket's wrong patch
    said): the index then equals the head at ``a.txt``, nothing is checked out there, no
    folder is cleaned, and the ticket's untracked ``a.txt/x`` reaches the next ticket."""
    head = warm(mirror)
    patch = ticket(mirror, head, ROOT_REPLACEMENTS["file-to-folder"])
    assert patch is not None
    nxt = commit_patch(origin, patch.data)
    assert mirror.fetch("main") == nxt
    with mirror.worktree(nxt) as path:
        assert_clean_checkout(path, nxt, fresh(nxt))


# -- a process of the command that outlives it ------------------------------------------


def test_a_daemon_with_a_cleared_environment_is_a_survivor(
    mirror: Mirror, tmp_path: Path, fresh: Callable[[str], Path]
) -> None:
    """``survivors`` finds a command's daemon by the ticket's marks in its environment;
    ``env -i`` (or any ``execve`` with a new environment) drops them. Such a daemon that
    writes a tracked file in place after the capture: the next reset is the short one
    (no process "left"), the file is not among the paths where the index differs from
    the head, and the next ticket sees the daemon's change."""
    head = warm(mirror)
    marks = {"SAGE_RUN_ID": "run-review", "SAGE_TICKET_ID": "T-review"}
    go, done, started = tmp_path / "go", tmp_path / "done", tmp_path / "started"
    script = (
        f"setsid env -i /bin/sh -c 'touch {started}; "
        f"while [ ! -e {go} ]; do sleep 0.01; done; echo late >> a.txt; touch {done}'"
        f" > /dev/null 2>&1 < /dev/null & while [ ! -e {started} ]; do sleep 0.01; done"
    )
    try:
        with mirror.worktree(head) as path:
            res = run_command(
                script,
                cwd=path,
                env={**os.environ, **marks},
                timeout=30,
                max_output_bytes=1000,
                kill_grace=1,
            )
            assert res.ok, res
            alone = not survivors(marks)
            take_patch(mirror, path, head)
            if alone:
                mirror.captured(path)
        go.touch()
        for _ in range(3000):  # the daemon's write, at most 30 s away
            if done.exists():
                break
            time.sleep(0.01)
        assert done.exists()
        with mirror.worktree(head) as path:
            assert_clean_checkout(path, head, fresh(head))
    finally:
        go.touch()


# -- git inside the command -------------------------------------------------------------

GIT_IN_COMMAND = {
    "commit": "echo c > a.txt && echo n > sub/n.txt && git add -A && git commit -qm x",
    "commit-then-edit": "git rm -q gone.txt && git commit -qm x && echo y > a.txt",
    "stash-pop": "echo s > a.txt && git stash -q && git stash pop -q",
    "add-then-remove": "echo n > sub/n.txt && git add sub/n.txt && rm sub/n.txt",
    "reset-hard-older": "git rm -q --cached a.txt",
    "checkout-file": "echo z > a.txt && git checkout -- a.txt && echo w > sub/w",
    "update-index-chmod": "git update-index --chmod=+x a.txt",
}


@pytest.mark.parametrize("case", sorted(GIT_IN_COMMAND))
def test_git_in_the_command_gives_the_fresh_patch_and_a_clean_next_ticket(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path], case: str
) -> None:
    head = warm(mirror)
    script = GIT_IN_COMMAND[case]
    patch = ticket(mirror, head, script)
    assert patch is not None
    assert patch.data == reference_patch(origin, tmp_path, head, script)
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))


# -- git state a command writes outside its files ---------------------------------------

#: a fake loose object for ``a.txt``'s blob at the head: zlib of "blob 5\\0fake\\n"
FAKE_BLOB = (
    'd="$(git rev-parse --git-common-dir)/objects" && o="$(git rev-parse HEAD:a.txt)"'
    ' && mkdir -p "$d/$(echo $o | cut -c1-2)"'
    " && python3 -c 'import sys, zlib;"
    ' sys.stdout.buffer.write(zlib.compress(b"blob 5\\0fake\\n"))\''
    ' > "$d/$(echo $o | cut -c1-2)/$(echo $o | cut -c3-)"'
)
#: a command that leaves git state of every kind behind (and a change to a.txt)
GIT_STATE = (
    "echo s > a.txt && git stash -q"
    " && git checkout -q -b feature && git commit -q --allow-empty -m on-feature"
    " && git tag mark && git update-ref refs/custom/x HEAD"
    " && git config user.name left-behind && git config core.autocrlf true"
    ' && mkdir -p "$(git rev-parse --git-path hooks)"'
    " && printf '#!/bin/sh\\nexit 1\\n' > \"$(git rev-parse --git-path hooks)/pre-commit\""
    ' && chmod +x "$(git rev-parse --git-path hooks)/pre-commit"'
    ' && echo "*.txt -diff" > "$(git rev-parse --git-common-dir)/info/attributes"'
    " && echo c >> a.txt && " + FAKE_BLOB
)
#: the next command: each step fails if anything of GIT_STATE is still there
AFTER_GIT_STATE = (
    'test -z "$(git stash list)" && test -z "$(git tag)"'
    ' && test -z "$(git config --local user.name || true)"'
    " && test \"$(git for-each-ref --format='%(refname)')\" = refs/heads/main"
    ' && test "$(git rev-parse main)" = "$(git rev-parse HEAD)"'
    " && git checkout -q -b feature && git tag mark && git commit -q --allow-empty -m ok"
    ' && echo x > a.txt && git stash -q && test "$(git stash list | wc -l)" = 1'
    " && git stash pop -q"
)


def test_git_state_a_command_writes_reaches_neither_the_mirror_nor_the_next_ticket(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path]
) -> None:
    """Branches, tags, stashes, other refs, config, hooks, attributes and objects a
    command writes through git stay in its worktree's own repository: the next ticket
    in the same worktree makes the same branch and tag, sees no stash, config or hook,
    and checks out the head's bytes, not the command's object; the mirror is unchanged."""
    head = warm(mirror)
    made = sorted((p.relative_to(mirror.path), p.read_bytes()) for p in _files(mirror.path))
    ticket(mirror, head, GIT_STATE)
    with mirror.worktree(head, "main") as path:
        assert_clean_checkout(path, head, fresh(head))
        assert (path / "a.txt").read_bytes() == (fresh(head) / "a.txt").read_bytes()
        sh(path, AFTER_GIT_STATE)
        patch = take_patch(mirror, path, head)
        mirror.captured(path)
    assert patch.data == reference_patch(origin, tmp_path, head, "echo x > a.txt")
    assert sorted((p.relative_to(mirror.path), p.read_bytes()) for p in _files(mirror.path)) == made


#: a command that changes its worktree's repository by hand, not through git
REPO_BY_HAND = {
    "branch-ref-a-fifo": "rm -f $R/refs/heads/main && mkfifo $R/refs/heads/main",
    "branch-ref-a-folder": "rm -f $R/refs/heads/main && mkdir -p $R/refs/heads/main/x",
    "packed-refs": 'echo "$(git rev-parse HEAD) refs/heads/packed" > $R/packed-refs',
    "head-a-link": "rm $R/HEAD && ln -s /etc/hostname $R/HEAD",
    "config-a-folder": "rm $R/config && mkdir $R/config",
    "objects-a-link": "mv $R/objects $R/o2 && ln -s o2 $R/objects",
    "alternates-extra": "echo /tmp >> $R/objects/info/alternates",
    "pack-file": "touch $R/objects/pack/pack-x.pack",
    "refs-a-file": "rm -r $R/refs && echo x > $R/refs",
    "another-worktree": "mkdir -p $R/worktrees/other && echo x > $R/worktrees/other/HEAD",
    "info-grafts": "echo $(git rev-parse HEAD) > $R/info/grafts",
    "fifos": 'mkfifo $R/p "$(git rev-parse --git-dir)/p" && mkdir $R/hooks && mkfifo $R/hooks/p',
}


@pytest.mark.parametrize("case", sorted(REPO_BY_HAND))
def test_a_worktree_repository_changed_by_hand_is_put_back(
    mirror: Mirror, fresh: Callable[[str], Path], case: str
) -> None:
    head = warm(mirror)
    script = 'R="$(git rev-parse --git-common-dir)" && ' + REPO_BY_HAND[case]
    ticket(mirror, head, script, capture=False)
    with mirror.worktree(head, "main") as path:
        assert_clean_checkout(path, head, fresh(head))
        refs = git(path, "for-each-ref", "--format=%(refname) %(objectname)").split("\n")
        assert refs == [f"refs/heads/main {head}", ""]
        common = Path(git(path, "rev-parse", "--path-format=absolute", "--git-common-dir").strip())
        assert sorted(os.listdir(common)) == [
            "HEAD",
            "config",
            "info",
            "objects",
            "refs",
            "worktrees",
        ]
        assert sorted(os.listdir(common / "worktrees")) == [path.name]


def test_two_worktrees_at_once_do_not_see_each_others_refs(
    mirror: Mirror, fresh: Callable[[str], Path]
) -> None:
    """Two tickets of one process at the same time (nested): each makes branch ``x``."""
    head = warm(mirror)
    with mirror.worktree(head, "main") as one, mirror.worktree(head, "main") as two:
        assert one != two
        sh(one, "git checkout -q -b x && git stash list")
        sh(two, "git checkout -q -b x && test \"$(git branch --list x)\" = '* x'")
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))


def write_lying_pack(objects: Path, oid: str, content: bytes) -> None:
    """A pack in ``objects/pack`` holding the blob ``content``, which its index lists as
    ``oid`` (git reads a pack's index and never hashes what it unpacks)."""
    size, header = len(content), bytearray()
    byte = 0x30 | (size & 0x0F)  # type 3: a blob
    size >>= 4
    while size:
        header.append(byte | 0x80)
        byte, size = size & 0x7F, size >> 7
    header.append(byte)
    entry = bytes(header) + zlib.compress(content)
    body = b"PACK" + struct.pack(">II", 2, 1) + entry
    digest = hashlib.sha1(body).digest()
    raw = bytes.fromhex(oid)
    fanout = b"".join(struct.pack(">I", int(i >= raw[0])) for i in range(256))
    idx = b"\xfftOc" + struct.pack(">I", 2) + fanout + raw
    idx += struct.pack(">II", zlib.crc32(entry), 12) + digest
    idx += hashlib.sha1(idx).digest()
    (objects / "pack").mkdir(parents=True, exist_ok=True)
    (objects / "pack" / f"pack-{digest.hex()}.pack").write_bytes(body + digest)
    (objects / "pack" / f"pack-{digest.hex()}.idx").write_bytes(idx)


@pytest.mark.parametrize("capture", [True, False], ids=["short-reset", "full-reset"])
def test_a_pack_a_command_writes_never_stands_in_for_the_mirrors_objects(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path], capture: bool
) -> None:
    """A command writes a pack whose index lists fake bytes under the id of ``a.txt``'s
    blob at the head, and changes ``a.txt``. Its objects wait in ``stale-objects``, an
    alternate after the mirror's, during the next reset; but git looks in every pack
    before any loose object, and in alternates' packs newest first: the reset checked
    the fake bytes out, under a clean ``git status``, and the ticket after that edits
    ``a.txt`` sent them in its patch."""
    head = warm(mirror)
    with mirror.worktree(head, "main") as path:
        common = git(path, "rev-parse", "--path-format=absolute", "--git-common-dir").strip()
        blob = git(path, "rev-parse", "HEAD:a.txt").strip()
        write_lying_pack(Path(common) / "objects", blob, b"fake\n")
        sh(path, "echo c >> a.txt")
        if capture:
            take_patch(mirror, path, head)
            mirror.captured(path)
    with mirror.worktree(head, "main") as path:
        assert_clean_checkout(path, head, fresh(head))
    patch = ticket(mirror, head, "echo y >> a.txt")
    assert patch is not None
    assert patch.data == reference_patch(origin, tmp_path, head, "echo y >> a.txt")


def test_the_last_tickets_objects_stay_for_the_reset_whatever_the_repository_holds(
    mirror: Mirror,
) -> None:
    """A command that leaves thousands of files in its worktree's repository: the tidy
    lists the repository while it moves ``objects`` to ``stale-objects``, so the listing
    may (here does) show ``stale-objects`` as one more stray entry, and the capture's
    objects (a symlink's blob the short reset compares) were removed with the strays."""
    head = warm(mirror)
    with mirror.worktree(head, "main") as path:
        sh(
            path,
            'R="$(git rev-parse --git-common-dir)" && seq 1 3000 | sed "s|^|$R/f|" | xargs touch'
            " && ln -s a.txt link",
        )
        take_patch(mirror, path, head)
        blob = git(path, "rev-parse", ":link").strip()
        name = path.name
    repo = mirror.repos / name
    tidy_repository(repo, mirror.path, name, "main", head)
    assert (repo / STALE).is_dir()
    assert git(mirror.idle / name, "cat-file", "-p", blob) == "a.txt"


def test_a_branch_is_asked_for_at_a_full_commit_id(mirror: Mirror) -> None:
    """The branch ref is written as a file holding the id given: an abbreviated one made
    a ref git ignores as broken (``git rev-parse main`` failed in the worktree)."""
    head = mirror.fetch("main")
    short = head[:12]
    with pytest.raises(RepositoryError, match="not a commit id"), mirror.worktree(short, "main"):
        pass
    with mirror.worktree(short) as path:
        assert git(path, "rev-parse", "HEAD").strip() == head


def _files(root: Path) -> list[Path]:
    """Every file under ``root`` (links and folders left out)."""
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


# -- odd entries ------------------------------------------------------------------------

#: fifos and unix sockets where git tracks the folder (``git clean`` leaves them)
SPECIAL = (
    "mkfifo top-p sub/dir/p && mkdir -p new/deep && mkfifo new/deep/p"
    " && python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"sub/s\")'"
)

ODD = {
    "hard-link": "ln a.txt sub/dir/hl && ln sub/dir/f.txt top-hl",
    "mv-in-from-outside": "echo o > ../outside-$$ && mv ../outside-$$ sub/dir/in.txt",
    "mv-folder-in": "mkdir -p ../od-$$/x && echo o > ../od-$$/x/f && mv ../od-$$ sub/od",
    "rename-folder": "mv sub/dir sub/dir2",
    "rename-root-folder": "mv sub sub2",
    "file-to-link": "rm sub/dir/f.txt && ln -s g.txt sub/dir/f.txt",
    "root-file-to-link": "rm a.txt && ln -s sub a.txt",
    "root-file-to-link-to-folder-and-write": "rm a.txt && ln -s sub a.txt && echo w > a.txt/w",
    "chmod": "chmod +x a.txt sub/dir/f.txt && chmod -x run.sh",
    "mtime-in-past": "echo p > sub/dir/p.txt && touch -d 2001-01-01 sub/dir/p.txt sub/dir sub",
    "same-size-same-mtime": "printf 'b\\n' > a.txt && touch -d 2001-01-01 a.txt",
    "create-then-delete-sibling": "echo n > sub/dir/n.txt && rm sub/dir/f.txt",
    "ignored-only": "echo i > sub/dir/i.log && mkdir -p build && echo b > build/b",
    "read-only-new-folder": "mkdir -p sub/ro && echo r > sub/ro/r && chmod 555 sub/ro",
    "read-only-tracked-folder": "echo r > sub/dir/r && chmod 555 sub/dir",
    "fifo-and-socket": SPECIAL,
    "fifo-in-read-only-folder": "mkfifo sub/dir/p && chmod 555 sub/dir",
}


@pytest.mark.parametrize("case", sorted(ODD))
def test_odd_entries_give_the_fresh_patch_and_a_clean_next_ticket(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path], case: str
) -> None:
    head = warm(mirror)
    script = ODD[case]
    patch = ticket(mirror, head, script)
    assert patch is not None
    assert patch.data == reference_patch(origin, tmp_path, head, script)
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))
    # and once more, the patch committed (the next head holds what the ticket made)
    if patch.data:
        nxt = commit_patch(origin, patch.data)
        assert mirror.fetch("main") == nxt
        with mirror.worktree(nxt) as path:
            assert_clean_checkout(path, nxt, fresh(nxt))
            sh(path, "mkdir -p sub && echo more > sub/late.txt")
            mirror.captured(path)
        with mirror.worktree(nxt) as path:
            assert_clean_checkout(path, nxt, fresh(nxt))


# -- a failed or killed ticket, then another in the same worktree -----------------------


def test_a_failed_ticket_then_one_that_adds_nothing(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path]
) -> None:
    head = warm(mirror)
    ticket(mirror, head, EVERYTHING, capture=False)  # exit code 1: DEFERRED, no capture
    patch = ticket(mirror, head, "echo x >> a.txt")
    assert patch is not None
    assert patch.data == reference_patch(origin, tmp_path, head, "echo x >> a.txt")
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))


def test_a_failed_ticket_leaves_no_fifo_or_socket(
    mirror: Mirror, fresh: Callable[[str], Path]
) -> None:
    """Not captured: the next reset is the full one, which walks every folder."""
    head = warm(mirror)
    ticket(mirror, head, SPECIAL + " && false || true", capture=False)
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))


def test_a_killed_ticket_leaves_nothing(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path]
) -> None:
    head = warm(mirror)
    with mirror.worktree(head) as path:
        res = run_command(
            "echo x > new.txt && mkdir -p sub/k && echo k > sub/k/k && sleep 60",
            cwd=path,
            env=dict(os.environ),
            timeout=1,
            max_output_bytes=1000,
            kill_grace=1,
        )
        assert not res.ok
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))


@pytest.mark.parametrize(
    "script",
    ["mv sub sub2 && ln -s sub2 sub", "mv sub/dir ../moved-$$ && ln -s ../../moved-$$ sub/dir"],
    ids=["inside", "outside"],
)
def test_a_folder_replaced_by_a_link_to_it_in_a_failed_ticket(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path], script: str
) -> None:
    """A command moves a tracked folder and leaves a link to it in its place, then fails
    (or its patch is refused: a link out of the worktree): no capture, the next reset is
    the full one. ``git checkout --force`` looks at ``sub/dir/f.txt`` through the link
    (``lstat`` follows a link on the way) and finds it unchanged, then ``git clean``
    removes the link: the next ticket had no ``sub/dir`` and its patch deleted it."""
    head = warm(mirror)
    ticket(mirror, head, script, capture=False)
    patch = ticket(mirror, head, "echo y >> a.txt")
    assert patch is not None
    assert patch.data == reference_patch(origin, tmp_path, head, "echo y >> a.txt")
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))


# -- the head the next ticket starts on -------------------------------------------------


def test_a_head_that_adds_a_file_where_the_ticket_made_a_folder(
    mirror: Mirror, origin: Path, fresh: Callable[[str], Path]
) -> None:
    """The ticket makes ``sub/dir/extra/e.txt``; a sibling's commit (the next head) makes
    ``sub/dir/extra`` a file."""
    head = warm(mirror)
    ticket(mirror, head, "mkdir -p sub/dir/extra && echo e > sub/dir/extra/e.txt")
    nxt = commit_files(origin, "main", {"sub/dir/extra": "a file now\n"})
    assert mirror.fetch("main") == nxt
    with mirror.worktree(nxt) as path:
        assert_clean_checkout(path, nxt, fresh(nxt))


def test_a_folder_made_by_the_checkout_gets_an_entry_in_the_next_ticket(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path]
) -> None:
    """A folder the short reset created (the next head adds ``z/late/t.txt``) is noted by
    the survey without git: a file the next command adds there must travel."""
    head = warm(mirror)
    ticket(mirror, head, "echo x >> a.txt")
    nxt = commit_files(origin, "main", {"z/late/t.txt": "late\n"})
    assert mirror.fetch("main") == nxt
    script = "echo n > z/late/n.txt"
    patch = ticket(mirror, nxt, script)
    assert patch is not None
    assert patch.data == reference_patch(origin, tmp_path, nxt, script)
    with mirror.worktree(nxt) as path:
        assert_clean_checkout(path, nxt, fresh(nxt))


def test_a_folder_the_ticket_made_and_the_head_took_gets_an_entry_later(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path]
) -> None:
    """The ticket makes ``new/deep/f``, its patch is committed: the index already equals
    the next head there, so ``new/deep`` is not among the reset's paths; it must still be
    watched for the ticket after."""
    head = warm(mirror)
    patch = ticket(mirror, head, "mkdir -p new/deep && echo f > new/deep/f")
    assert patch is not None
    nxt = commit_patch(origin, patch.data)
    assert mirror.fetch("main") == nxt
    ticket(mirror, nxt, "echo x >> a.txt")  # the ticket between: a survey without git
    script = "echo n > new/deep/n.txt"
    patch = ticket(mirror, nxt, script)
    assert patch is not None
    assert patch.data == reference_patch(origin, tmp_path, nxt, script)
    with mirror.worktree(nxt) as path:
        assert_clean_checkout(path, nxt, fresh(nxt))


# -- submodules (gitlinks): a folder git tracks that ls-tree -d does not list ---------------


@pytest.fixture
def with_gitlink(origin: Path) -> str:
    """``main`` of ``origin`` gains a gitlink ``sub/mod`` (an uninitialised submodule)."""
    head = git(origin, "rev-parse", "main").strip()
    env = {"GIT_INDEX_FILE": str(origin / "review-index")}
    git(origin, "read-tree", head, env=env)
    git(origin, "update-index", "--add", "--cacheinfo", f"160000,{head},sub/mod", env=env)
    tree = git(origin, "write-tree", env=env).strip()
    sha = git(origin, "commit-tree", tree, "-p", head, "-m", "gitlink").strip()
    git(origin, "update-ref", "refs/heads/main", sha, head)
    os.unlink(origin / "review-index")
    return sha


def test_the_folder_of_a_gitlink_stays_after_a_short_reset(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path], with_gitlink: str
) -> None:
    """A ticket adds a file in ``sub``: the survey after the next reset walks ``sub`` and
    notes the gitlink's empty folder ``sub/mod`` among the folders. A ticket then adds and
    removes an entry in ``sub/mod``: its times move, the reset after removes the folders
    it left empty there (``sub/mod`` is no path the checkout touched, so it is not kept):
    the gitlink's folder is gone, and the ticket after stages the submodule's deletion."""
    head = warm(mirror)
    ticket(mirror, head, "echo n > sub/n")
    ticket(mirror, head, "echo x > sub/mod/x && rm sub/mod/x")
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))
    script = "echo y >> a.txt"
    patch = ticket(mirror, head, script)
    assert patch is not None
    assert patch.data == reference_patch(origin, tmp_path, head, script)


@pytest.mark.parametrize("capture", [True, False], ids=["short-reset", "full-reset"])
def test_files_in_a_submodules_folder_are_gone_for_the_next_ticket(
    mirror: Mirror,
    origin: Path,
    tmp_path: Path,
    fresh: Callable[[str], Path],
    with_gitlink: str,
    capture: bool,
) -> None:
    """A command fills the uninitialised submodule's folder ``sub/mod`` (as ``git
    submodule update --init`` would, here a repository of its own): neither ``git
    checkout --force`` nor ``git clean`` looks inside it; a fresh clone has it empty."""
    head = warm(mirror)
    script = (
        "echo x > sub/mod/x && mkdir -p sub/mod/d && echo y > sub/mod/d/y"
        " && git -C sub/mod init -q && echo n >> a.txt"
    )
    ticket(mirror, head, script, capture=capture)
    with mirror.worktree(head) as path:
        assert_clean_checkout(path, head, fresh(head))
    patch = ticket(mirror, head, "echo y >> a.txt")
    assert patch is not None
    assert patch.data == reference_patch(origin, tmp_path, head, "echo y >> a.txt")


def test_a_submodule_the_next_head_turns_into_a_folder_keeps_its_files(
    mirror: Mirror, origin: Path, tmp_path: Path, fresh: Callable[[str], Path], with_gitlink: str
) -> None:
    """The last index had the gitlink ``sub/mod``; the next head has a folder with a file
    there: the short reset checks ``sub/mod/f.txt`` out, and emptying the submodules'
    folders must not take it away."""
    head = warm(mirror)
    ticket(mirror, head, "echo n >> a.txt")
    nxt = commit_files(origin, "main", {"sub/mod": None, "sub/mod/f.txt": "f\n"})
    assert mirror.fetch("main") == nxt
    with mirror.worktree(nxt) as path:
        assert_clean_checkout(path, nxt, fresh(nxt))
    patch = ticket(mirror, nxt, "echo y >> a.txt")
    assert patch is not None
    assert patch.data == reference_patch(origin, tmp_path, nxt, "echo y >> a.txt")


# -- adoption after a crash -------------------------------------------------------------


def test_a_worktree_adopted_after_its_process_died_between_tickets(
    tmp_path: Path, origin: Path, fresh: Callable[[str], Path]
) -> None:
    """A process plays a ticket (captured) and dies without closing its mirror; a later
    process adopts the idle worktree: it must reset it in full."""
    workdir = tmp_path / "workdir"
    head = git(origin, "rev-parse", "main").strip()
    child = f"""
import os, sys
sys.path.insert(0, {str(Path.cwd())!r})
from pathlib import Path
from sage_tasks.gitops import Mirror
from tests.support.worktrees import ticket
m = Mirror(Path({str(workdir)!r}), {str(origin)!r}, adopt=True)
head = m.fetch("main")
ticket(m, head, "true")
ticket(m, head, {EVERYTHING!r})
with m.worktree(head) as path:
    (path / "a.txt").write_text("left by a process that died\\n")
os._exit(0)
"""
    subprocess.run([os.sys.executable, "-c", child], check=True)  # type: ignore[attr-defined]
    m = Mirror(workdir, str(origin), adopt=True)
    try:
        with m.worktree(head) as path:
            assert_clean_checkout(path, head, fresh(head))
    finally:
        m.close()
