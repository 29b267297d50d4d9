"""The commit path: one ticket's patch and index change, as one commit, exactly once.

Nothing here touches a work tree. A commit is built in a private index
(``GIT_INDEX_FILE``) kept between commits, and published with a
compare-and-swap on the branch ref, so a checked-out branch, a crash half-way
or a lost lock never leaves a half-written repository or a lost update.

git start-up dominates the cost of a commit, and the commit queue is the one
serial resource, so in the usual case (a :class:`Repository` kept open, the
branch where our last commit left it) a commit spawns three git processes:
``apply``, ``write-tree``, ``commit-tree``. Reads go through long-lived
``cat-file`` processes and the ref update through a long-lived
``update-ref --stdin``; the private index and the last ticket index written
are kept; the index change rides in the same ``git apply`` as the ticket's
patch; and the 3-way merge (which git tries first, at a price) is asked for
only when a file the patch changes has moved on since the worker's base.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from sage_tasks.core.index import DEFAULT_INDEX_PATH, IndexDocument, State, is_valid_ticket_id
from sage_tasks.errors import GitError, PatchRejected, RepositoryError
from sage_tasks.gitops.branch import check_branch_name
from sage_tasks.gitops.diff import FileDiff, parse_patch
from sage_tasks.gitops.history import find_ticket_commit, message
from sage_tasks.gitops.process import first_line
from sage_tasks.gitops.replacement import replace_file_patch
from sage_tasks.gitops.repository import Repository
from sage_tasks.gitops.safety import check_files, normal_path, path_problem

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+@-]{0,127}$")

_CONFLICT_RES = (
    re.compile(r"^Applied patch to '(.+)' with conflicts\.$"),
    re.compile(r"^error: patch failed: (.+):\d+$"),
    re.compile(
        r"^error: (.+?): (?:already exists in index|does not exist in index"
        r"|does not match index|patch does not apply)$"
    ),
)
_APPLY = (
    "-c",
    "apply.ignoreWhitespace=no",
    "apply",
    "--cached",
    "--whitespace=nowarn",
)


@dataclass(frozen=True)
class CommitResult:
    """What a commit did: the commit, the state it recorded, conflicts, and if it was a repeat."""

    sha: str
    state: State
    conflicts: list[str] = field(default_factory=list)
    already: bool = False
    #: nothing was committed: the patch conflicted and the caller runs the ticket again
    rerun: bool = False


class CommitTarget:
    """Commits tickets of a run to ``refs/heads/<branch>`` of ``repo``.

    ``repo`` is a path (a :class:`Repository` is opened and owned) or an open
    :class:`Repository`, which a commit worker keeps for all the branches of
    its repository so the helper processes and private index are reused.
    ``before_update_ref`` is a fault-injection hook called after the commit
    object is written and before the ref moves.
    """

    def __init__(
        self,
        repo: Path | Repository,
        branch: str,
        index_path: str = DEFAULT_INDEX_PATH,
        *,
        before_update_ref: Callable[[], None] | None = None,
    ) -> None:
        check_branch_name(branch)
        index_path = normal_path(index_path)
        problem = path_problem(index_path)
        if problem:
            raise RepositoryError(f"bad ticket index path: {problem}", path=index_path)
        self._owned = not isinstance(repo, Repository)
        self.repo = repo if isinstance(repo, Repository) else Repository(repo)
        self.branch = branch
        self.ref = f"refs/heads/{branch}"
        self.index_path = index_path
        self.before_update_ref = before_update_ref

    def close(self) -> None:
        """Release the repository if this target opened it."""
        if self._owned:
            self.repo.close()

    def __enter__(self) -> CommitTarget:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the commit ------------------------------------------------------------

    def commit(
        self,
        ticket_id: str,
        title: str,
        run_id: str,
        patch: bytes | None,
        state: State,
        reason: str | None = None,
        *,
        before_update_ref: Callable[[], None] | None = None,
        rerun_on_conflict: bool = False,
    ) -> CommitResult:
        """Record one finished ticket: its patch (if COMPLETED) and its new state, in one commit.

        Idempotent: when the branch already records this ticket as COMPLETED,
        or as DEFERRED by a commit of this run, nothing is written and the
        result has ``already=True``. A patch that does not merge onto the
        branch head is dropped and the ticket recorded DEFERRED with
        ``merge conflict in: <paths>``. Raises :class:`PatchRejected` for an
        unsafe patch, :class:`RefMoved` when the branch moves under us
        (retry), :class:`GitError` for an unknown ticket. With
        ``rerun_on_conflict`` a merge conflict commits nothing: the result has
        ``rerun=True`` and the conflicting paths, for the ticket to run again.
        """
        self._check_args(ticket_id, run_id, state)
        body = b""
        files: list[FileDiff] = []
        if state is State.COMPLETED and patch:
            files = parse_patch(patch)
            check_files(files)
            files = self._without_index(files)
            body = b"".join(patch[f.start : f.end] for f in files)
        head = self.repo.head(self.ref)
        if head is None:
            raise RepositoryError(f"branch {self.branch!r} does not exist", path=self.branch)
        head_sha, head_tree = head
        index_oid, index_data, doc = self._load_index(head_sha)
        ticket = doc.get(ticket_id)
        if ticket is None:
            raise GitError(
                f"ticket {ticket_id} is not in {self.index_path} on {self.branch}",
                tickets=[ticket_id],
            )
        done = self._already(ticket_id, run_id, ticket.state, head_sha)
        if done is not None:
            self.repo.last_index = (index_oid, index_data, doc)
            return done
        title = title or ticket.title
        old = (index_oid, index_data)

        conflicts: list[str] = []
        tree: str | None = None
        if state is State.COMPLETED:
            doc.set_state(ticket_id, State.COMPLETED)
            exact = self._preimages_at(head_sha, files)
            tree, conflicts, failure = self._apply(head_tree, body, old, doc.dumps(), exact, doc)
            if tree is None and conflicts and rerun_on_conflict:
                return CommitResult(head_sha, State.DEFERRED, conflicts, rerun=True)
            if tree is None:
                state = State.DEFERRED
                reason = (
                    f"merge conflict in: {', '.join(conflicts)}"
                    if conflicts
                    else f"patch does not apply: {failure}"
                )
        if tree is None:
            doc.set_state(ticket_id, State.DEFERRED, reason)
            tree, _, failure = self._apply(head_tree, b"", old, doc.dumps(), True, doc)
            if tree is None:
                raise GitError(f"cannot update {self.index_path}: {failure}", tickets=[ticket_id])

        text = message(ticket_id, title, run_id, reason if state is State.DEFERRED else None)
        new = self.repo.commit_tree(tree, head_sha, text)
        hook = before_update_ref or self.before_update_ref
        if hook is not None:
            hook()
        self.repo.update_ref(self.ref, new, head_sha)
        return CommitResult(new, state, conflicts, already=False)

    # -- steps -----------------------------------------------------------------

    @staticmethod
    def _check_args(ticket_id: str, run_id: str, state: State) -> None:
        if not is_valid_ticket_id(ticket_id):
            raise GitError(f"invalid ticket id {ticket_id!r}", tickets=[str(ticket_id)])
        if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
            raise GitError(f"invalid run id {run_id!r}", tickets=[ticket_id])
        if state not in (State.COMPLETED, State.DEFERRED):
            raise GitError(
                f"a commit records COMPLETED or DEFERRED, not {state}", tickets=[ticket_id]
            )

    def _load_index(self, head_sha: str) -> tuple[str, bytes, IndexDocument]:
        """The ticket index at ``head_sha``: blob id, content, parsed document.

        The document our last commit wrote is kept (by blob id, so it cannot
        go stale) and reused when the branch still holds it: the usual case
        neither reads nor parses the index again.
        """
        oid = self.repo.object_id(f"{head_sha}:{self.index_path}")
        memo, self.repo.last_index = self.repo.last_index, None
        if oid is not None and memo is not None and memo[0] == oid:
            return memo
        blob = self.repo.read(oid) if oid is not None else None
        if blob is None or blob.type != "blob":
            raise GitError(
                f"no ticket index at {self.index_path} on {self.branch}", path=self.index_path
            )
        return blob.oid, blob.data, IndexDocument.loads(blob.data, source=self.index_path)

    def _without_index(self, files: list[FileDiff]) -> list[FileDiff]:
        """The sections that do not change the ticket index (an executor's edits are not taken)."""
        for fd in files:
            if self.index_path in fd.paths and len(fd.paths) > 1:
                raise PatchRejected(
                    f"patch renames or copies the ticket index {self.index_path}",
                    path=self.index_path,
                )
        return [fd for fd in files if self.index_path not in fd.paths]

    def _already(
        self, ticket_id: str, run_id: str, recorded: State, head_sha: str
    ) -> CommitResult | None:
        if recorded is State.COMPLETED:
            git_dir = self.repo.git_dir
            sha = find_ticket_commit(git_dir, head_sha, ticket_id, run_id) or find_ticket_commit(
                git_dir, head_sha, ticket_id, None
            )
            return CommitResult(sha or head_sha, State.COMPLETED, already=True)
        if recorded is State.DEFERRED:
            sha = find_ticket_commit(self.repo.git_dir, head_sha, ticket_id, run_id)
            if sha is not None:
                return CommitResult(sha, State.DEFERRED, already=True)
        return None

    def _apply(
        self,
        head_tree: str,
        body: bytes,
        index: tuple[str, bytes],
        index_data: bytes,
        exact: bool,
        doc: IndexDocument | None = None,
    ) -> tuple[str | None, list[str], str]:
        """Build the tree of ``head_tree`` + patch + new index; ``(tree, conflicts, failure)``.

        ``exact``: every file the patch changes is at the head exactly as the
        patch expects, so a straight apply gives what a merge would, and the
        3-way machinery (git tries it first) is skipped. ``tree`` is None
        when the patch does not apply; the private index is then thrown away.
        """
        repo = self.repo
        old_oid, old_data = index
        new_oid = repo.blob_id(index_data)
        if not body and new_oid != old_oid:
            # only the index changes: its blob and the trees above it, no private index
            tree = repo.with_blob(head_tree, self.index_path, index_data)
            if tree is not None:
                if doc is not None:
                    repo.last_index = (new_oid, index_data, doc)
                return tree, [], ""
        patch = body
        if new_oid != old_oid:
            patch += replace_file_patch(self.index_path, old_oid, new_oid, old_data, index_data)
        if not patch:
            return head_tree, [], ""
        if repo.index_tree != head_tree:
            repo.run("read-tree", head_tree, index=True)
        repo.index_tree = None  # unknown until write-tree says what it holds
        straight = exact or not body
        proc = repo.run(*_APPLY, input=patch, index=True, check=False) if straight else None
        if body and (proc is None or proc.returncode != 0):
            proc = repo.run(*_APPLY, "--3way", input=patch, index=True, check=False)
        assert proc is not None
        if proc.returncode != 0:
            return None, self._conflicts(proc.stderr), first_line(proc.stderr)
        tree = repo.run("write-tree", index=True).stdout.decode().strip()
        repo.index_tree = tree
        if doc is not None:
            repo.last_index = (new_oid, index_data, doc)
        return tree, [], ""

    def _preimages_at(self, head_sha: str, files: list[FileDiff]) -> bool:
        """True when each changed file is at ``head_sha`` as the patch's ``index`` line says."""
        for fd in files:
            if fd.old_path is None:
                if fd.new_path is None or self.repo.object_id(f"{head_sha}:{fd.new_path}"):
                    return False
            elif (
                fd.old_oid is None or self.repo.object_id(f"{head_sha}:{fd.old_path}") != fd.old_oid
            ):
                return False
        return True

    def _conflicts(self, stderr: bytes) -> list[str]:
        found: list[str] = []
        for line in stderr.decode("utf-8", "replace").splitlines():
            for pattern in _CONFLICT_RES:
                m = pattern.match(line.strip())
                if m and m.group(1) not in found:
                    found.append(m.group(1))
        unmerged = self.repo.run("ls-files", "-u", "-z", index=True, check=False).stdout
        for entry in unmerged.split(b"\0"):
            if b"\t" in entry:
                path = entry.split(b"\t", 1)[1].decode("utf-8", "surrogateescape")
                if path not in found:
                    found.append(path)
        return sorted(p for p in found if p != self.index_path)
