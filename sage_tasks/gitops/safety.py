"""Is a patch safe to apply? Paths from the wire are never trusted.

A patch is refused when any name in it is absolute, climbs with ``..``,
touches a ``.git`` directory, or when it creates a symlink that points out of
the tree (absolute, ``..``, into ``.git``) or writes a path beneath a symlink
it creates. Submodule entries are refused as well: a worktree never has a
reason to produce them.
"""

from __future__ import annotations

import posixpath
import re

from sage_tasks.errors import PatchRejected
from sage_tasks.gitops.diff import GITLINK_MODE, SYMLINK_MODE, FileDiff, parse_patch

#: what git on Windows and macOS also treats as ".git"
_GIT_ALIASES = {".git", "git~1"}
#: code points HFS+ ignores in file names, so ".g\u200cit" is ".git" on a Mac
#: (git's is_hfs_dotgit skips the same ones)
_HFS_IGNORED_RE = re.compile("[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]")


def is_git_name(part: str) -> bool:
    """True when a path component names ``.git`` on some file system a clone may live on.

    Case does not matter; trailing dots and spaces and an NTFS stream suffix
    (``.git::$INDEX_ALLOCATION``) are dropped as Windows does, and the code
    points HFS+ ignores as macOS does.
    """
    name = _HFS_IGNORED_RE.sub("", part).split(":", 1)[0].rstrip(". ").lower()
    return name in _GIT_ALIASES


def path_problem(path: str) -> str | None:
    """Why ``path`` may not appear in a patch, or None when it may."""
    if not path:
        return "an empty path"
    if "\0" in path or "\\" in path:
        return f"path {path!r} has a NUL or backslash"
    if path.startswith("/"):
        return f"absolute path {path!r}"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return (
                f"path {path!r} leaves the repository"
                if part == ".."
                else (f"path {path!r} is not normalised")
            )
        if is_git_name(part):
            return f"path {path!r} touches .git"
    return None


def normal_path(path: str) -> str:
    """``path`` as git names it inside a tree: no ``./``, no doubled or trailing slashes."""
    if not path or path.startswith("/"):
        return path
    normal = posixpath.normpath(path)
    return "" if normal == "." else normal


def link_problem(path: str, target: bytes) -> str | None:
    """Why a symlink at ``path`` to ``target`` may not be created, or None."""
    text = target.decode("utf-8", "surrogateescape")
    if not text:
        return f"symlink {path!r} has an empty target"
    if text.startswith("/"):
        return f"symlink {path!r} points to the absolute path {text!r}"
    parts = text.split("/")
    if ".." in parts:
        return f"symlink {path!r} points outside the repository ({text!r})"
    if any(is_git_name(p) for p in parts):
        return f"symlink {path!r} points into .git ({text!r})"
    return None


def section_problem(fd: FileDiff) -> str | None:
    """Why one section of a patch is unsafe, or None."""
    for name in fd.names:
        problem = path_problem(name)
        if problem:
            return problem
    if GITLINK_MODE in (fd.new_mode, fd.old_mode):
        return f"submodule entry {fd.names[-1]!r}"
    if fd.new_mode == SYMLINK_MODE and fd.new_path is not None:
        if fd.binary:
            return f"symlink {fd.new_path!r} given as binary data"
        return link_problem(fd.new_path, fd.added)
    return None


def check_files(files: list[FileDiff]) -> list[str]:
    """The paths of parsed sections, after every safety check (see :func:`check_patch`)."""
    paths: list[str] = []
    links: list[str] = []
    for fd in files:
        problem = section_problem(fd)
        if problem:
            raise PatchRejected(f"unsafe patch: {problem}", path=fd.names[0])
        if fd.new_mode == SYMLINK_MODE and fd.new_path is not None:
            links.append(fd.new_path)
        for p in fd.paths:
            if p not in paths:
                paths.append(p)
    for link in links:
        below = next((p for p in paths if p.startswith(link + "/")), None)
        if below is not None:
            raise PatchRejected(
                f"unsafe patch: {below!r} is written through the symlink {link!r}", path=below
            )
    return paths


def check_patch(data: bytes) -> list[str]:
    """The paths a patch touches; raises :class:`PatchRejected` if it is malformed or unsafe."""
    return check_files(parse_patch(data))
