"""An open repository: where it lives, and the long-lived git processes that serve it.

Git commands that only need objects, refs and a private index are run from
inside the git directory, where git sets up no work tree at all: nothing this
module does can touch a checkout, bare or not.

The commit worker's usual commit changes one file's content (the ticket
index) and writes a commit object: on a SHA-1 repository both are written
here with gitdb and GitPython's tree codec, as loose objects, with no git
process. Anything else (a patch to apply, another object format, an
encoding header, dates fixed by the environment) goes through git itself.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from sage_tasks.errors import GitError, RefMoved, RepositoryError
from sage_tasks.gitops.process import Helper, first_line, git_env, run_git
from sage_tasks.gitops.treepatch import TreePatcher

if TYPE_CHECKING:
    from sage_tasks.core.index import IndexDocument

#: identity used for commits when the host has none configured
FALLBACK_NAME = "sage-tasks"
FALLBACK_EMAIL = "sage-tasks@localhost"
_IDENTITY_RE = re.compile(rb"identity unknown|unable to auto-detect|empty ident name|ident name")


def repo_root(path: Path) -> Path:
    """The top of the repository holding ``path``: its work tree, or the git dir if bare.

    Raises :class:`RepositoryError` when ``path`` is not inside a git repository.
    """
    bare, git_dir = locate_repo(path)
    if bare:
        return git_dir
    proc = run_git(path, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        # inside the .git directory of a non-bare repository
        return git_dir.parent
    return Path(proc.stdout.decode("utf-8", "surrogateescape").strip())


def locate_repo(path: Path) -> tuple[bool, Path]:
    """``(is_bare, git_dir)`` of the repository at ``path``; :class:`RepositoryError` if none."""
    bare, git_dir, _, _ = _probe(path)
    return bare, git_dir


def _probe(path: Path) -> tuple[bool, Path, str, Path]:
    """``(is_bare, git_dir, object_format, objects_dir)`` of the repository at ``path``."""
    if not path.is_dir():
        raise RepositoryError(f"{path} is not a directory", path=str(path))
    proc = run_git(
        path,
        "rev-parse",
        "--is-bare-repository",
        "--absolute-git-dir",
        "--show-object-format",
        "--path-format=absolute",
        "--git-path",
        "objects",
        check=False,
    )
    if proc.returncode != 0:
        raise RepositoryError(f"{path} is not a git repository", path=str(path))
    lines = proc.stdout.decode("utf-8", "surrogateescape").splitlines()
    if len(lines) != 4:
        raise RepositoryError(f"{path}: git rev-parse said {lines!r}", path=str(path))
    bare, git_dir, fmt, objects = lines
    return bare == "true", Path(git_dir), fmt or "sha1", Path(objects)


class GitObject:
    """One object read from the repository."""

    __slots__ = ("data", "oid", "type")

    def __init__(self, oid: str, type: str, data: bytes) -> None:
        self.oid = oid
        self.type = type
        self.data = data


class Repository:
    """A repository opened for the commit path (not thread-safe; re-opened after a fork).

    Holds a ``git cat-file --batch`` reader and a ``git update-ref --stdin``
    writer that live as long as this object, and a private index file in a
    temporary folder that is kept between commits, so that the usual case
    (the branch is where our last commit left it) needs no ``read-tree``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bare, self.git_dir, self.object_format, objects = _probe(path)
        self.null_oid = "0" * hashlib.new(self.object_format).digest_size * 2
        settings = self._write_settings()
        # GitPython's codecs are loaded by the writer only: readers of an index start faster
        from gitdb.db.loose import LooseObjectDB

        #: loose objects written here (gitdb knows SHA-1 only); None: by git, which also
        #: honours a shared repository's permissions and fsync settings
        self._objects = (
            LooseObjectDB(str(objects))
            if self.object_format == "sha1" and not _git_must_write(settings)
            else None
        )
        #: commits carry an encoding header (git writes those)
        self._encoded = settings.get("i18n.commitencoding", "").lower() not in ("", "utf-8", "utf8")
        self._reader = Helper(self.git_dir, "cat-file", "--batch")
        self._checker = Helper(self.git_dir, "cat-file", "--batch-check")
        self._refs = Helper(self.git_dir, "update-ref", "-m", "sage-tasks: commit", "--stdin")
        #: ``git hash-object`` writers by object type, where git writes objects
        self._writers: dict[str, Helper] = {}
        #: the ticket index the last commit wrote: (blob id, content, parsed document)
        self.last_index: tuple[str, bytes, IndexDocument] | None = None
        #: author/committer variables, set once git says it has no identity
        self._ident: dict[str, str] = {}
        self._pid = 0
        self._private()

    def _write_settings(self) -> dict[str, str]:
        """The settings that decide who writes objects and commits, read once."""
        proc = self.run(
            "config",
            "--get-regexp",
            r"^(core\.(sharedrepository|fsync|fsyncobjectfiles|fsyncmethod)|i18n\.commitencoding)$",
            check=False,
        )
        lines = proc.stdout.decode("utf-8", "replace").splitlines()
        return dict(line.partition(" ")[::2] for line in lines)

    def _private(self) -> Path:
        """This process's temporary folder (a forked child gets its own)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._tmp = Path(tempfile.mkdtemp(prefix="sage-git-"))
            self._index_tree: str | None = None
            self._index_stamp: tuple[int, int, int, int] | None = None
            self._finalizer = weakref.finalize(
                self,
                _release,
                (self._reader, self._checker, self._refs),
                self._writers,
                self._tmp,
                self._pid,
            )
        elif not self._tmp.is_dir():
            self._tmp.mkdir(parents=True, exist_ok=True)
            self._index_tree = None
        return self._tmp

    @property
    def index_file(self) -> Path:
        """The private index file used by ``run(..., index=True)``."""
        return self._private() / "index"

    @property
    def index_tree(self) -> str | None:
        """The tree the private index holds, when known (None: read a tree into it first).

        Trusted only while the file is the one we wrote: a temp cleaner that
        deleted it must not turn the next commit into "delete everything".
        """
        self._private()
        if self._index_tree is None or self._index_stamp != _stamp(self.index_file):
            return None
        return self._index_tree

    @index_tree.setter
    def index_tree(self, tree: str | None) -> None:
        self._private()
        self._index_tree = tree
        self._index_stamp = _stamp(self.index_file) if tree is not None else None

    # -- life cycle ----------------------------------------------------------

    def close(self) -> None:
        """Stop the helper processes and remove the private index."""
        self._finalizer()

    def __enter__(self) -> Repository:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- running git ---------------------------------------------------------

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        index: bool = False,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run git in the git dir; ``index=True`` points it at the private index."""
        extra = dict(env or {})
        if index:
            extra["GIT_INDEX_FILE"] = str(self.index_file)
        return run_git(self.git_dir, *args, input=input, env=extra, check=check)

    def commit_tree(self, tree: str, parent: str, message: bytes) -> str:
        """Write a commit of ``tree`` on ``parent``; return its id.

        Written here, byte for byte as ``git commit-tree`` would, when the
        repository allows it (see :meth:`_commit_idents`); by git otherwise.
        A commit worker on a host without ``user.name``/``user.email`` still
        commits, as ``sage-tasks <sage-tasks@localhost>``.
        """
        idents = self._commit_idents
        if idents is not None:
            now = b"%d %s" % (int(time.time()), time.strftime("%z").encode())
            author, committer = idents
            text = b"tree %s\nparent %s\nauthor %s %s\ncommitter %s %s\n\n" % (
                tree.encode(),
                parent.encode(),
                author,
                now,
                committer,
                now,
            )
            return self.write_object("commit", text + message)
        return self._commit_tree_by_git(tree, parent, message)

    @functools.cached_property
    def _commit_idents(self) -> tuple[bytes, bytes] | None:
        """Author and committer (``Name <email>``) for commits written here, or None.

        Asked of git once per process (``git var``, so the environment and
        every config level count). None, and git writes each commit itself,
        when commits carry an encoding header or take their dates from the
        environment.
        """
        if self._objects is None or self._encoded:
            return None
        if any(os.environ.get(v) for v in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE")):
            return None
        # (commit-tree signs only when asked to, whatever commit.gpgSign says)
        found: list[bytes] = []
        for role in ("AUTHOR", "COMMITTER"):
            proc = self.run("var", f"GIT_{role}_IDENT", env=self._ident, check=False)
            if proc.returncode != 0 and not self._ident and _IDENTITY_RE.search(proc.stderr):
                self._ident = _fallback_ident()
                proc = self.run("var", f"GIT_{role}_IDENT", env=self._ident, check=False)
            # "Name <email> 1700000000 +0000": the date is the commit's own
            ident = proc.stdout.strip().rsplit(b" ", 2)[0]
            if proc.returncode != 0 or not ident.endswith(b">") or b"\n" in ident:
                return None
            found.append(ident)
        return (found[0], found[1])

    def _commit_tree_by_git(self, tree: str, parent: str, message: bytes) -> str:
        args = ("commit-tree", tree, "-p", parent)
        proc = self.run(*args, input=message, env=self._ident, check=False)
        if proc.returncode != 0 and not self._ident and _IDENTITY_RE.search(proc.stderr):
            self._ident = _fallback_ident()
            proc = self.run(*args, input=message, env=self._ident, check=False)
        if proc.returncode != 0:
            raise GitError(f"git commit-tree failed in {self.git_dir}: {first_line(proc.stderr)}")
        return proc.stdout.decode().strip()

    # -- objects -------------------------------------------------------------

    def write_object(self, kind: str, data: bytes) -> str:
        """Store an object of type ``kind``; return its id.

        Where git must write objects (another object format, a shared
        repository, fsync settings) they go through a long-lived ``git
        hash-object --stdin-paths`` per type, from a file in our folder.
        """
        if self._objects is None:
            return self._write_by_git(kind, data)
        from gitdb.base import IStream

        stream = self._objects.store(IStream(kind.encode(), len(data), io.BytesIO(data)))
        return str(stream.hexsha.decode())

    def _write_by_git(self, kind: str, data: bytes) -> str:
        helper = self._writers.get(kind)
        if helper is None:
            args = ("hash-object", "-w", "--no-filters", "-t", kind, "--stdin-paths")
            helper = self._writers[kind] = Helper(self.git_dir, *args)
        source = self._private() / f"object.{kind}"
        source.write_bytes(data)
        helper.send(str(source).encode("utf-8", "surrogateescape") + b"\n")
        oid = helper.stdout.readline().decode().strip()
        if len(oid) != len(self.null_oid):
            raise helper.fail(f"did not write a {kind}")
        return oid

    @functools.cached_property
    def patcher(self) -> TreePatcher:
        """Applies patches to this repository's trees in process (see :mod:`.treepatch`)."""

        # through a weak reference: no cycle, so the repository's helpers still stop
        # as soon as the last reference to it goes
        ref = weakref.ref(self)

        def repo() -> Repository:
            found = ref()
            if found is None:
                raise GitError("the repository was closed")
            return found

        def read(oid: str) -> tuple[str, bytes] | None:
            obj = repo().read(oid)
            return (obj.type, obj.data) if obj is not None else None

        def write(kind: str, data: bytes) -> str:
            return repo().write_object(kind, data)

        return TreePatcher(read, write, self.object_format)

    def with_blob(self, tree: str, path: str, data: bytes) -> str | None:
        """The id of ``tree`` with the existing regular file ``path`` holding ``data``.

        Writes the blob and the trees above it. None when ``path`` is not a
        regular file of ``tree`` or a name on the way cannot be written back
        exactly: the caller then goes through a private index.
        """
        if self._objects is None:
            return None
        blob = self.write_object("blob", data)
        return self._replace(tree, path.split("/"), blob)

    def _replace(self, tree: str, names: list[str], blob: str) -> str | None:
        obj = self.read(tree)
        if obj is None or obj.type != "tree":
            return None
        from git.objects.fun import tree_entries_from_data

        try:
            entries = tree_entries_from_data(obj.data)
            if _tree_bytes(entries) != obj.data:
                return None  # an entry git wrote that the codec would write otherwise
        except (ValueError, IndexError, UnicodeEncodeError):
            return None
        for i, (binsha, mode, name) in enumerate(entries):
            if name != names[0]:
                continue
            if len(names) > 1:
                if mode != 0o40000:
                    return None
                new = self._replace(binsha.hex(), names[1:], blob)
            else:
                new = blob if mode in (0o100644, 0o100755) else None
            if new is None:
                return None
            entries[i] = (bytes.fromhex(new), mode, name)
            return self.write_object("tree", _tree_bytes(entries))
        return None

    def read(self, name: str) -> GitObject | None:
        """The object ``name`` resolves to (any rev syntax), or None if there is none."""
        if "\n" in name:
            raise GitError(f"invalid object name {name!r}")
        helper = self._reader
        helper.send(name.encode("utf-8", "surrogateescape") + b"\n")
        out = helper.stdout
        header = out.readline()
        if not header:
            raise helper.fail(f"stopped reading {name!r}")
        parts = header.split()
        if len(parts) == 2 and parts[1] in (b"missing", b"ambiguous"):
            return None
        if len(parts) != 3:
            raise helper.fail(f"gave an unexpected answer {header!r}")
        size = int(parts[2])
        data = out.read(size + 1)
        if len(data) != size + 1:
            raise helper.fail(f"stopped reading {name!r}")
        return GitObject(parts[0].decode(), parts[1].decode(), data[:-1])

    def object_id(self, name: str) -> str | None:
        """The id of the object ``name`` resolves to, without reading it; None if none."""
        if "\n" in name:
            raise GitError(f"invalid object name {name!r}")
        helper = self._checker
        helper.send(name.encode("utf-8", "surrogateescape") + b"\n")
        parts = helper.stdout.readline().split()
        if not parts:
            raise helper.fail(f"stopped checking {name!r}")
        if len(parts) != 3:
            return None
        return parts[0].decode()

    def head(self, ref: str) -> tuple[str, str] | None:
        """``(commit, tree)`` of the commit ``ref`` points to, or None when it does not exist."""
        obj = self.read(ref)
        if obj is None:
            return None
        if obj.type != "commit":
            raise RepositoryError(f"{ref} is a {obj.type}, not a commit", path=str(self.path))
        first = obj.data.split(b"\n", 1)[0]
        if not first.startswith(b"tree "):
            raise GitError(f"commit {obj.oid} has no tree line")
        return obj.oid, first[5:].decode()

    def blob_id(self, data: bytes) -> str:
        """The id git gives a blob with this content (computed here, not written)."""
        h = hashlib.new(self.object_format)
        h.update(b"blob %d\0" % len(data))
        h.update(data)
        return h.hexdigest()

    # -- refs ----------------------------------------------------------------

    def update_ref(self, ref: str, new: str, old: str) -> None:
        """Point ``ref`` at ``new`` only if it is at ``old`` now (``old`` empty: must not exist).

        Raises :class:`RefMoved` when the ref is elsewhere or locked by another writer.
        """
        helper = self._refs
        helper.send(f"start\nupdate {ref} {new} {old or self.null_oid}\ncommit\n".encode())
        out = helper.stdout
        answers = (out.readline(), out.readline())
        if answers == (b"start: ok\n", b"commit: ok\n"):
            return
        err = helper.fail("did not update " + ref)
        stderr = helper.last_stderr
        if b"cannot lock ref" in stderr or b"Unable to create" in stderr:
            raise RefMoved(f"{ref} moved while committing: {first_line(stderr)}", path=ref)
        raise err


def _tree_bytes(entries: list[tuple[bytes, int, str]]) -> bytes:
    from git.objects.fun import tree_to_stream

    out = io.BytesIO()
    tree_to_stream(entries, out.write)
    return out.getvalue()


def _git_must_write(settings: dict[str, str]) -> bool:
    """True when the settings ask for what only git does when it writes objects."""
    for name, value in settings.items():
        if name == "core.sharedrepository":
            if value.lower() not in ("", "false", "umask", "0"):
                return True
        elif name.startswith("core."):
            return True
    return False


def _fallback_ident() -> dict[str, str]:
    """Author and committer variables for a host without an identity: the environment's or ours."""
    env, ident = git_env(), {}
    for role in ("AUTHOR", "COMMITTER"):
        for key, fallback in (("NAME", FALLBACK_NAME), ("EMAIL", FALLBACK_EMAIL)):
            var = f"GIT_{role}_{key}"
            ident[var] = env.get(var) or fallback
    return ident


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _release(helpers: tuple[Helper, ...], writers: dict[str, Helper], tmp: Path, pid: int) -> None:
    if pid != os.getpid():
        return
    for helper in (*helpers, *writers.values()):
        helper.close()
    shutil.rmtree(tmp, ignore_errors=True)
